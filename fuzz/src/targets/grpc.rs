//! The model server's gRPC messages: the protobuf bytes tonic hands to prost (after its own
//! length-prefixed framing, which is tonic's), decoded into the generated types, and for
//! `ModelInfer` converted with `grpc::decode_grpc` into the request REST builds, then
//! validated against the model.

use std::collections::HashMap;

use prost::Message;
use sluice_model_server::grpc::decode_grpc;
use sluice_model_server::grpc::inference::infer_parameter::ParameterChoice;
use sluice_model_server::grpc::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use sluice_model_server::grpc::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelMetadataRequest,
    ModelReadyRequest, RepositoryIndexRequest, RepositoryModelLoadRequest,
};
use sluice_model_server::model::{ModelMetadata, tensor_meta, validate_inputs};
use sluice_model_server::tensor::DataType;

use super::target::{Target, outcome};

/// Field values that mean something to the conversion.
const DICTIONARY: &[&str] = &[
    "FP32",
    "FP64",
    "FP16",
    "BF16",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT64",
    "BOOL",
    "BYTES",
    "input-0",
    "text",
    "iris",
    "binary_data",
];

/// `inference.GRPCInferenceService/ModelInfer` and the other request messages.
pub const INFER: Target = Target {
    name: "grpc-infer",
    about: "gRPC request messages: prost decode of ModelInferRequest (then grpc::decode_grpc \
            and model::validate_inputs against Iris' metadata), ModelMetadataRequest, \
            ModelReadyRequest, RepositoryIndexRequest, RepositoryModelLoadRequest",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: super::target::nothing_to_prepare,
    run: |input| {
        let mut out = String::new();
        match ModelInferRequest::decode(input) {
            Ok(request) => {
                let request = decode_grpc(request);
                out += &outcome(&request);
                if let Ok(request) = request {
                    out += &outcome(&validate_inputs(iris(), &request.inputs));
                }
            }
            Err(e) => out += &e.to_string(),
        }
        out += &outcome(&ModelMetadataRequest::decode(input));
        out += &outcome(&ModelReadyRequest::decode(input));
        out += &outcome(&RepositoryIndexRequest::decode(input));
        out += &outcome(&RepositoryModelLoadRequest::decode(input));
        out
    },
};

/// Iris' metadata (as `Mlp` declares it), for validation.
fn iris() -> &'static ModelMetadata {
    static IRIS: std::sync::OnceLock<ModelMetadata> = std::sync::OnceLock::new();
    IRIS.get_or_init(|| ModelMetadata {
        name: "iris".into(),
        versions: Vec::new(),
        platform: "sluice-candle".into(),
        inputs: vec![tensor_meta("input-0", DataType::Fp32, vec![-1, 4])],
        outputs: vec![
            tensor_meta("output-0", DataType::Int64, vec![-1]),
            tensor_meta("probabilities", DataType::Fp32, vec![-1, 3]),
        ],
    })
}

fn tensor(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        parameters: HashMap::new(),
        contents: None,
    }
}

/// The requests the committed `grpc-infer` corpus was written from (`sluice-fuzz
/// write-grpc-seeds DIR`), named: typed contents, raw contents, BYTES, parameters.
pub fn seed_requests() -> Vec<(&'static str, ModelInferRequest)> {
    let typed = ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            contents: Some(InferTensorContents {
                fp32_contents: vec![6.8, 2.8, 4.8, 1.4],
                ..Default::default()
            }),
            ..tensor("input-0", "FP32", vec![1, 4])
        }],
        ..Default::default()
    };
    let mut raw_bytes = Vec::new();
    for v in [5.1f32, 3.5, 1.4, 0.2, 6.3, 3.3, 6.0, 2.5] {
        raw_bytes.extend(v.to_le_bytes());
    }
    let raw = ModelInferRequest {
        model_name: "iris".into(),
        model_version: "2".into(),
        id: "req-1".into(),
        inputs: vec![tensor("input-0", "FP32", vec![2, 4])],
        outputs: vec![InferRequestedOutputTensor {
            name: "probabilities".into(),
            parameters: HashMap::new(),
        }],
        raw_input_contents: vec![raw_bytes],
        ..Default::default()
    };
    let mut text = Vec::new();
    for s in ["Sluice serves models", ""] {
        text.extend((s.len() as u32).to_le_bytes());
        text.extend(s.as_bytes());
    }
    let bytes = ModelInferRequest {
        model_name: "minilm".into(),
        inputs: vec![tensor("text", "BYTES", vec![2])],
        raw_input_contents: vec![text],
        ..Default::default()
    };
    let param = |c| InferParameter {
        parameter_choice: Some(c),
    };
    let params = ModelInferRequest {
        model_name: "m".into(),
        parameters: HashMap::from([
            ("flag".into(), param(ParameterChoice::BoolParam(true))),
            ("n".into(), param(ParameterChoice::Int64Param(-3))),
            ("s".into(), param(ParameterChoice::StringParam("x".into()))),
            ("d".into(), param(ParameterChoice::DoubleParam(0.5))),
            ("u".into(), param(ParameterChoice::Uint64Param(u64::MAX))),
        ]),
        inputs: vec![
            InferInputTensor {
                contents: Some(InferTensorContents {
                    int_contents: vec![1, -1, 127, -128],
                    ..Default::default()
                }),
                ..tensor("a", "INT8", vec![2, 2])
            },
            InferInputTensor {
                contents: Some(InferTensorContents {
                    uint64_contents: vec![u64::MAX],
                    ..Default::default()
                }),
                ..tensor("b", "UINT64", vec![1])
            },
            InferInputTensor {
                contents: Some(InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                }),
                ..tensor("c", "BOOL", vec![2])
            },
        ],
        ..Default::default()
    };
    vec![
        ("typed-fp32", typed),
        ("raw-fp32", raw),
        ("raw-bytes", bytes),
        ("params-int8-uint64-bool", params),
    ]
}
