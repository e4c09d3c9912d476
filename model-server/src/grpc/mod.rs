//! gRPC `inference.GRPCInferenceService` (tonic), served on the REST port (HTTP/2 requests
//! to `/inference.GRPCInferenceService/*` reach it) and optionally on a port of its own.
//!
//! Requests become the same `codec::InferRequest` the REST surface builds, so validation,
//! batching, metrics and errors are shared; errors map to gRPC codes (§5: INVALID_ARGUMENT,
//! NOT_FOUND, UNAVAILABLE, UNIMPLEMENTED, INTERNAL). Outputs always travel as
//! `raw_output_contents`, as Triton answers.

#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod inference;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::codec::{InferRequest, RequestedOutput};
use crate::error::InferError;
use crate::service::{AppState, execute};
use crate::tensor::{
    DataType, NamedTensor, Parameters, TensorData, element_count, shape_from_wire,
};
use inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use inference::infer_parameter::ParameterChoice;
use inference::*;

/// Path prefix of every method of the service.
pub const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";

/// The service over the server's shared state.
#[derive(Clone)]
pub struct GrpcService {
    state: Arc<AppState>,
}

impl GrpcService {
    /// The tonic server for `state`.
    /// Messages larger than `max_message_bytes` are refused (RESOURCE_EXHAUSTED).
    pub fn server(
        state: Arc<AppState>,
        max_message_bytes: usize,
    ) -> GrpcInferenceServiceServer<GrpcService> {
        GrpcInferenceServiceServer::new(GrpcService { state })
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(usize::MAX)
    }
}

impl InferError {
    /// The gRPC status for this error.
    pub fn to_status(&self) -> Status {
        let message = sluice_core::error_chain(self);
        match self {
            InferError::ModelNotFound(_) => Status::not_found(message),
            InferError::NotReady(_) => Status::unavailable(message),
            InferError::QueueFull(_) => Status::resource_exhausted(message),
            InferError::NotImplemented(_) => Status::unimplemented(message),
            InferError::Forbidden(_) => Status::permission_denied(message),
            InferError::InvalidBody { .. }
            | InferError::InvalidInput { .. }
            | InferError::InvalidHeader { .. }
            | InferError::UnknownOutput(_) => Status::invalid_argument(message),
            InferError::Compute(_) | InferError::Task(_) | InferError::LoadFailed { .. } => {
                Status::internal(message)
            }
        }
    }
}

fn param_to_json(p: &InferParameter) -> serde_json::Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => (*b).into(),
        Some(ParameterChoice::Int64Param(i)) => (*i).into(),
        Some(ParameterChoice::StringParam(s)) => s.clone().into(),
        Some(ParameterChoice::DoubleParam(d)) => (*d).into(),
        Some(ParameterChoice::Uint64Param(u)) => (*u).into(),
        None => serde_json::Value::Null,
    }
}

fn json_to_param(v: &serde_json::Value) -> Option<InferParameter> {
    let choice = match v {
        serde_json::Value::Bool(b) => ParameterChoice::BoolParam(*b),
        serde_json::Value::String(s) => ParameterChoice::StringParam(s.clone()),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ParameterChoice::Int64Param(i)
            } else if let Some(u) = n.as_u64() {
                ParameterChoice::Uint64Param(u)
            } else {
                ParameterChoice::DoubleParam(n.as_f64()?)
            }
        }
        _ => return None,
    };
    Some(InferParameter {
        parameter_choice: Some(choice),
    })
}

fn params_in(map: &std::collections::HashMap<String, InferParameter>) -> Option<Parameters> {
    if map.is_empty() {
        return None;
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Some(
        keys.into_iter()
            .map(|k| (k.clone(), param_to_json(&map[k])))
            .collect(),
    )
}

fn params_out(p: Option<&Parameters>) -> std::collections::HashMap<String, InferParameter> {
    p.into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), json_to_param(v)?)))
        .collect()
}

/// Typed `contents` of one tensor as `TensorData`, checked against the element count.
fn from_contents(
    datatype: DataType,
    c: InferTensorContents,
    count: usize,
) -> Result<TensorData, String> {
    fn narrow<T: TryFrom<S>, S: Copy + std::fmt::Display>(
        v: Vec<S>,
        dt: DataType,
    ) -> Result<Vec<T>, String> {
        v.into_iter()
            .map(|x| T::try_from(x).map_err(|_| format!("{x} is not a valid {dt} element")))
            .collect()
    }
    let data = match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Int8 => TensorData::Int8(narrow(c.int_contents, datatype)?),
        DataType::Int16 => TensorData::Int16(narrow(c.int_contents, datatype)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(c.uint_contents, datatype)?),
        DataType::Uint16 => TensorData::Uint16(narrow(c.uint_contents, datatype)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(format!(
                "{datatype} has no typed contents field; send it in raw_input_contents"
            ));
        }
    };
    if data.len() != count {
        return Err(format!(
            "shape needs {count} elements, contents has {} {datatype} elements",
            data.len()
        ));
    }
    Ok(data)
}

/// Converts a gRPC request into the shared request form.
pub fn decode_grpc(req: ModelInferRequest) -> Result<InferRequest, InferError> {
    let raw = req.raw_input_contents;
    let uses_raw = !raw.is_empty();
    if uses_raw && raw.len() != req.inputs.len() {
        return Err(InferError::InvalidBody {
            path: "raw_input_contents".into(),
            message: format!(
                "has {} entries for {} inputs; send one per input, in order",
                raw.len(),
                req.inputs.len()
            ),
        });
    }
    let mut inputs: Vec<NamedTensor> = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let invalid = |message: String| InferError::InvalidInput {
            tensor: input.name.clone(),
            message,
        };
        if inputs.iter().any(|t| t.name == input.name) {
            return Err(invalid("the input appears more than once".into()));
        }
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "datatype {:?} is not an OIP datatype",
                input.datatype
            ))
        })?;
        let shape = shape_from_wire(&input.shape).map_err(invalid)?;
        let count = element_count(&shape)
            .ok_or_else(|| invalid(format!("shape {:?} is too large", input.shape)))?;
        let data = match (uses_raw, input.contents) {
            (true, Some(c)) if c != InferTensorContents::default() => {
                return Err(invalid(
                    "has typed contents while the request also has raw_input_contents; send one"
                        .into(),
                ));
            }
            (true, _) => TensorData::from_binary(datatype, &raw[i], count).map_err(invalid)?,
            (false, Some(c)) => from_contents(datatype, c, count).map_err(invalid)?,
            (false, None) => return Err(invalid("has no contents".into())),
        };
        inputs.push(NamedTensor {
            name: input.name,
            shape,
            parameters: params_in(&input.parameters),
            data,
        });
    }
    let outputs = if req.outputs.is_empty() {
        None
    } else {
        Some(
            req.outputs
                .into_iter()
                .map(|o| RequestedOutput {
                    name: o.name,
                    binary: true,
                })
                .collect(),
        )
    };
    Ok(InferRequest {
        id: (!req.id.is_empty()).then_some(req.id),
        // The message's model_name and model_version are themselves the address (there is
        // no URL to contradict); `model_infer` serves and echoes them.
        model_name: None,
        model_version: None,
        ignored_fields: (Vec::new(), 0),
        parameters: params_in(&req.parameters),
        inputs,
        outputs,
        binary_output: true,
    })
}

fn metadata_response(m: &crate::model::ModelMetadata) -> ModelMetadataResponse {
    let tensors = |ts: &[crate::model::TensorMetadata]| {
        ts.iter()
            .map(|t| model_metadata_response::TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
            })
            .collect()
    };
    ModelMetadataResponse {
        name: m.name.clone(),
        versions: m.versions.clone(),
        platform: m.platform.clone(),
        inputs: tensors(&m.inputs),
        outputs: tensors(&m.outputs),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.state.repository.all_ready() && !self.state.queue.is_draining();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        match self.state.repository.get(&req.get_ref().name) {
            Ok(_) => Ok(Response::new(ModelReadyResponse { ready: true })),
            Err(InferError::NotReady(_)) => Ok(Response::new(ModelReadyResponse { ready: false })),
            Err(e) => Err(e.to_status()),
        }
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "sluice-model-server".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::service::EXTENSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let served = self
            .state
            .repository
            .get(&req.get_ref().name)
            .map_err(|e| e.to_status())?;
        Ok(Response::new(metadata_response(served.model.metadata())))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let req = req.into_inner();
        let name = req.model_name.clone();
        let version = (!req.model_version.is_empty()).then(|| req.model_version.clone());
        let served = self
            .state
            .repository
            .get(&name)
            .map_err(|e| e.to_status())?;
        let _request = served.metrics.request();
        let started = tokio::time::Instant::now();
        let request = decode_grpc(req).map_err(|e| e.to_status())?;
        served
            .metrics
            .preprocess
            .observe_duration(started.elapsed());
        let response = execute(&served, &name, version, request)
            .await
            .map_err(|e| e.to_status())?;
        let started = tokio::time::Instant::now();
        let mut outputs = Vec::with_capacity(response.outputs.len());
        let mut raw = Vec::with_capacity(response.outputs.len());
        for (t, _) in &response.outputs {
            outputs.push(model_infer_response::InferOutputTensor {
                name: t.name.clone(),
                datatype: t.data.datatype().as_str().to_owned(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: params_out(t.parameters.as_ref()),
                contents: None,
            });
            let mut bytes = Vec::with_capacity(t.data.binary_size());
            t.data.write_binary(&mut bytes);
            raw.push(bytes);
        }
        let reply = ModelInferResponse {
            model_name: response.model_name,
            model_version: response.model_version.unwrap_or_default(),
            id: response.id.unwrap_or_default(),
            parameters: params_out(response.parameters.as_ref()),
            outputs,
            raw_output_contents: raw,
        };
        served
            .metrics
            .postprocess
            .observe_duration(started.elapsed());
        Ok(Response::new(reply))
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let only_ready = req.get_ref().ready;
        let models = self
            .state
            .repository
            .index()
            .into_iter()
            .filter(|e| !only_ready || e.state == "READY")
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: String::new(),
                state: e.state,
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.state
            .repository
            .load_requested(&req.get_ref().model_name)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.state
            .repository
            .unload_requested(&req.get_ref().model_name)
            .map_err(|e| e.to_status())?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
