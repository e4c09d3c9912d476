//! gRPC `inference.GRPCInferenceService` on the REST port, over a real socket (h2c), with
//! the generated tonic client: health, metadata, infer with typed contents and raw
//! contents, repository load/unload, and the error codes of §5.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use sluice_model_server::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_model_server::grpc::inference::infer_parameter::ParameterChoice;
use sluice_model_server::grpc::inference::model_infer_request::InferInputTensor;
use sluice_model_server::grpc::inference::*;
use sluice_model_server::http::{AppState, router};
use sluice_model_server::{BatchConfig, ModelControl, ModelSource, Repository};
use sluice_queue::{Queue, QueueConfig};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const ROWS: [f32; 8] = [5.1, 3.5, 1.4, 0.2, 6.3, 3.3, 6.0, 2.5];

async fn serve() -> (
    GrpcInferenceServiceClient<Channel>,
    tokio::sync::oneshot::Sender<()>,
) {
    // Model control on: these tests drive the repository API's load and unload.
    let repository = Arc::new(
        Repository::new(None, std::env::temp_dir(), BatchConfig::default())
            .with_control(ModelControl::Explicit),
    );
    let iris = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    repository.add(
        "iris",
        ModelSource {
            format: "sluice-mlp".into(),
            storage_uri: iris.to_string_lossy().into_owned(),
            batching: BatchConfig::default(),
        },
    );
    repository.load("iris").await.unwrap();
    let state = Arc::new(AppState {
        repository,
        queue: Arc::new(Queue::new(
            QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            Instant::now(),
        )),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        axum::serve(listener, router(state, 1 << 20))
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .into_future(),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (GrpcInferenceServiceClient::new(channel), tx)
}

fn input(contents: Option<InferTensorContents>, datatype: &str) -> InferInputTensor {
    InferInputTensor {
        name: "input-0".into(),
        datatype: datatype.into(),
        shape: vec![2, 4],
        contents,
        ..Default::default()
    }
}

fn classes(resp: &ModelInferResponse) -> Vec<i64> {
    resp.raw_output_contents[0]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn grpc_health_metadata_infer_and_repository() {
    let (mut c, stop) = serve().await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "sluice-model-server");
    let m = c
        .model_metadata(ModelMetadataRequest {
            name: "iris".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.inputs[0].shape, vec![-1, 4]);
    assert_eq!(m.outputs[0].datatype, "INT64");

    // Typed contents, with id and parameters round-tripped.
    let typed = ModelInferRequest {
        model_name: "iris".into(),
        id: "g-1".into(),
        parameters: [(
            "tag".to_owned(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam("x".into())),
            },
        )]
        .into(),
        inputs: vec![input(
            Some(InferTensorContents {
                fp32_contents: ROWS.to_vec(),
                ..Default::default()
            }),
            "FP32",
        )],
        ..Default::default()
    };
    let resp = c.model_infer(typed.clone()).await.unwrap().into_inner();
    assert_eq!(resp.id, "g-1");
    assert_eq!(resp.parameters["tag"], typed.parameters["tag"]);
    assert_eq!(resp.outputs[0].name, "output-0");
    assert_eq!(resp.outputs[0].shape, vec![2]);
    assert_eq!(classes(&resp), vec![0, 2]);

    // Raw contents, one requested output.
    let raw = ModelInferRequest {
        model_name: "iris".into(),
        model_version: "3".into(),
        inputs: vec![input(None, "FP32")],
        outputs: vec![model_infer_request::InferRequestedOutputTensor {
            name: "output-0".into(),
            ..Default::default()
        }],
        raw_input_contents: vec![ROWS.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    };
    let resp = c.model_infer(raw.clone()).await.unwrap().into_inner();
    assert_eq!(resp.model_version, "3");
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(classes(&resp), vec![0, 2]);

    // Repository.
    c.repository_model_unload(RepositoryModelUnloadRequest {
        model_name: "iris".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ready = c
        .model_ready(ModelReadyRequest {
            name: "iris".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    let err = c.model_infer(raw.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    c.repository_model_load(RepositoryModelLoadRequest {
        model_name: "iris".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let index = c
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models[0].name, "iris");
    assert_eq!(index.models[0].state, "READY");
    stop.send(()).unwrap();
}

#[tokio::test]
async fn grpc_errors_have_their_codes_and_name_the_problem() {
    let (mut c, stop) = serve().await;
    let base = ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![input(None, "FP32")],
        raw_input_contents: vec![ROWS.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    };
    let mut both = base.clone();
    both.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: ROWS.to_vec(),
        ..Default::default()
    });
    let mut unknown = base.clone();
    unknown.model_name = "nope".into();
    let mut short = base.clone();
    short.raw_input_contents[0].truncate(12);
    let mut extra_raw = base.clone();
    extra_raw.raw_input_contents.push(vec![0; 4]);
    let mut fp16_typed = base.clone();
    fp16_typed.raw_input_contents.clear();
    fp16_typed.inputs[0] = input(Some(InferTensorContents::default()), "FP16");
    let mut wrong_type = base.clone();
    wrong_type.raw_input_contents[0] = vec![0; 64];
    wrong_type.inputs[0].datatype = "FP64".into();
    let mut typed_short = base.clone();
    typed_short.raw_input_contents.clear();
    typed_short.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    });
    let mut unknown_output = base.clone();
    unknown_output.outputs = vec![model_infer_request::InferRequestedOutputTensor {
        name: "nope".into(),
        ..Default::default()
    }];
    let cases = [
        (
            both,
            Code::InvalidArgument,
            "input \"input-0\": has typed contents while the request also has raw_input_contents",
        ),
        (unknown, Code::NotFound, "model \"nope\" not found"),
        (
            short,
            Code::InvalidArgument,
            "input \"input-0\": shape needs 8 elements of 4 bytes (32 bytes), binary data has 12 bytes",
        ),
        (
            extra_raw,
            Code::InvalidArgument,
            "invalid request body at raw_input_contents: has 2 entries for 1 inputs",
        ),
        (
            fp16_typed,
            Code::InvalidArgument,
            "input \"input-0\": FP16 has no typed contents field",
        ),
        (
            wrong_type,
            Code::InvalidArgument,
            "input \"input-0\": datatype is FP64, the model expects FP32",
        ),
        (
            typed_short,
            Code::InvalidArgument,
            "input \"input-0\": shape needs 8 elements, contents has 1 FP32 elements",
        ),
        (
            unknown_output,
            Code::InvalidArgument,
            "output \"nope\" is not an output of this model",
        ),
    ];
    for (req, code, message) in cases {
        let err = c.model_infer(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().starts_with(message),
            "{:?} should start with {message:?}",
            err.message()
        );
    }
    let err = c
        .model_metadata(ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    stop.send(()).unwrap();
}
