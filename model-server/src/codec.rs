//! Inference request and response bodies on the wire: the OIP v2 JSON body, the binary
//! tensor data extension (JSON header + raw little-endian tensors), and KServe v1
//! `instances` → `predictions`.
//!
//! Decoding checks everything that can be checked without the model (datatype names,
//! shapes against element counts, binary section sizes) and names the field or tensor at
//! fault; `model::validate_inputs` then checks the request against the model's metadata.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::InferError;
use crate::model::ModelMetadata;
use crate::tensor::{
    DataType, NamedTensor, Parameters, TensorData, element_count, shape_from_wire,
};

/// Header giving the length of the JSON part of a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Parameter: size in bytes of a tensor's binary data.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Output parameter: return this output as binary.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter: return all outputs as binary unless an output says otherwise.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// Names of ignored top-level fields kept per request (for the debug log); the rest are
/// counted only.
pub const MAX_IGNORED_NAMES: usize = 8;

/// A decoded inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    /// Request id, echoed.
    pub id: Option<String>,
    /// The model the body names (`model_name`, as the kserve SDK sends it); the URL decides
    /// which model answers and [`InferRequest::version_for`] refuses a body that
    /// contradicts it. `None` when absent, null or empty.
    pub model_name: Option<String>,
    /// The version the body names (`model_version`); see `model_name`.
    pub model_version: Option<String>,
    /// Unknown top-level fields, ignored as KServe's server ignores them: the first
    /// [`MAX_IGNORED_NAMES`] names, and how many there were.
    pub ignored_fields: (Vec<String>, usize),
    /// Request parameters, round-tripped.
    pub parameters: Option<Parameters>,
    /// Input tensors.
    pub inputs: Vec<NamedTensor>,
    /// Outputs asked for; all (in the model's order) when `None`.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Whether outputs not listed (or listed without `binary_data`) come back binary.
    pub binary_output: bool,
}

/// One requested output.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Return it as binary data.
    pub binary: bool,
}

/// A computed response, before encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Its version, when one was asked for.
    pub model_version: Option<String>,
    /// The request's id.
    pub id: Option<String>,
    /// The request's parameters.
    pub parameters: Option<Parameters>,
    /// Outputs, each with whether it goes back as binary.
    pub outputs: Vec<(NamedTensor, bool)>,
}

/// The top-level request object. Unlike the tensors inside it, it accepts fields it does not
/// know (KServe's server ignores them, and its SDK sends `model_name`), so it is decoded by
/// hand to remember their names.
struct WireRequest {
    id: Option<String>,
    model_name: Option<String>,
    model_version: Option<String>,
    parameters: Option<Parameters>,
    inputs: Vec<WireInput>,
    outputs: Option<Vec<WireOutput>>,
    ignored: (Vec<String>, usize),
}

impl<'de> Deserialize<'de> for WireRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;

        fn once<T, E: de::Error>(slot: &mut Option<T>, field: &'static str, v: T) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(E::duplicate_field(field));
            }
            Ok(())
        }

        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = WireRequest;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an inference request object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireRequest, A::Error> {
                // Each slot is Some once its key was seen (its value may be null).
                let mut id: Option<Option<String>> = None;
                let mut model_name: Option<Option<String>> = None;
                let mut model_version: Option<Option<String>> = None;
                let mut parameters: Option<Option<Parameters>> = None;
                let mut inputs: Option<Vec<WireInput>> = None;
                let mut outputs: Option<Option<Vec<WireOutput>>> = None;
                let mut ignored = (Vec::new(), 0);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "id" => once(&mut id, "id", map.next_value()?)?,
                        "model_name" => once(&mut model_name, "model_name", map.next_value()?)?,
                        "model_version" => {
                            once(&mut model_version, "model_version", map.next_value()?)?;
                        }
                        "parameters" => once(&mut parameters, "parameters", map.next_value()?)?,
                        "inputs" => once(&mut inputs, "inputs", map.next_value()?)?,
                        "outputs" => once(&mut outputs, "outputs", map.next_value()?)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            if ignored.0.len() < MAX_IGNORED_NAMES {
                                ignored.0.push(key);
                            }
                            ignored.1 += 1;
                        }
                    }
                }
                let nonempty = |v: Option<Option<String>>| v.flatten().filter(|s| !s.is_empty());
                Ok(WireRequest {
                    id: id.flatten(),
                    model_name: nonempty(model_name),
                    model_version: nonempty(model_version),
                    parameters: parameters.flatten(),
                    inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
                    outputs: outputs.flatten(),
                    ignored,
                })
            }
        }

        deserializer.deserialize_map(RequestVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a Parameters>,
    outputs: Vec<WireResponseOutput<'a>>,
}

#[derive(Serialize)]
struct WireResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Parameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, InferError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        InferError::InvalidBody {
            path: if path == "." || path == "?" {
                "body".to_owned()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }
    })
}

fn bool_param(params: Option<&Parameters>, key: &str, path: &str) -> Result<bool, InferError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(InferError::InvalidBody {
            path: format!("{path}.parameters.{key}"),
            message: format!("expected a boolean, got {other}"),
        }),
    }
}

/// Parses the `Inference-Header-Content-Length` header value.
pub fn parse_header_length(value: &[u8]) -> Result<usize, InferError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(|| InferError::InvalidHeader {
            header: "Inference-Header-Content-Length".into(),
            message: format!("{:?} is not a byte count", String::from_utf8_lossy(value)),
        })
}

/// Decodes a `POST .../infer` body. `header_length` is the `Inference-Header-Content-Length`
/// value when the body uses the binary extension.
pub fn decode_request(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<InferRequest, InferError> {
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(n) if n > body.len() => {
            return Err(InferError::InvalidHeader {
                header: "Inference-Header-Content-Length".into(),
                message: format!("{n} exceeds the body length {}", body.len()),
            });
        }
        Some(n) => body.split_at(n),
    };
    let wire: WireRequest = parse_json(json)?;
    let binary_output = bool_param(wire.parameters.as_ref(), BINARY_DATA_OUTPUT, "body")?;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for (i, input) in wire.inputs.into_iter().enumerate() {
        let invalid = |message: String| InferError::InvalidInput {
            tensor: input.name.clone(),
            message,
        };
        if inputs.iter().any(|t: &NamedTensor| t.name == input.name) {
            return Err(invalid("the input appears more than once".into()));
        }
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "datatype {:?} is not one of BOOL, UINT8..64, INT8..64, FP16, BF16, FP32, FP64, \
                 BYTES",
                input.datatype
            ))
        })?;
        let shape = shape_from_wire(&input.shape).map_err(invalid)?;
        let count = element_count(&shape)
            .ok_or_else(|| invalid(format!("shape {:?} is too large", input.shape)))?;
        let size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get(BINARY_DATA_SIZE))
        {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| InferError::InvalidBody {
                        path: format!("inputs[{i}].parameters.{BINARY_DATA_SIZE}"),
                        message: format!("expected a byte count, got {v}"),
                    })?,
            ),
        };
        let data = match (size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "has both JSON data and parameters.{BINARY_DATA_SIZE}; send one"
                )));
            }
            (None, None) => {
                return Err(invalid(format!(
                    "has neither data nor parameters.{BINARY_DATA_SIZE}"
                )));
            }
            (Some(n), None) => {
                if n > binary.len() {
                    return Err(invalid(format!(
                        "{BINARY_DATA_SIZE} {n} exceeds the {} bytes of binary data left in \
                         the body",
                        binary.len()
                    )));
                }
                let (raw, rest) = binary.split_at(n);
                binary = rest;
                TensorData::from_binary(datatype, raw, count).map_err(invalid)?
            }
            (None, Some(value)) => TensorData::from_json(datatype, value, count)
                .map_err(|m| invalid(format!("{m} (shape {:?})", input.shape)))?,
        };
        inputs.push(NamedTensor {
            name: input.name,
            shape,
            parameters: input.parameters,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(InferError::InvalidBody {
            path: "body".into(),
            message: format!(
                "{} bytes of binary data follow the JSON header but no input claims them",
                binary.len()
            ),
        });
    }
    let outputs = match wire.outputs {
        None => None,
        Some(list) => {
            let mut outs = Vec::with_capacity(list.len());
            for (i, o) in list.into_iter().enumerate() {
                let binary = match o.parameters.as_ref().and_then(|p| p.get(BINARY_DATA)) {
                    None => binary_output,
                    Some(_) => {
                        bool_param(o.parameters.as_ref(), BINARY_DATA, &format!("outputs[{i}]"))?
                    }
                };
                outs.push(RequestedOutput {
                    name: o.name,
                    binary,
                });
            }
            Some(outs)
        }
    };
    Ok(InferRequest {
        id: wire.id,
        model_name: wire.model_name,
        model_version: wire.model_version,
        ignored_fields: wire.ignored,
        parameters: wire.parameters,
        inputs,
        outputs,
        binary_output,
    })
}

impl InferRequest {
    /// Checks the model and version the body names against those of the URL
    /// (`/v2/models/{model}[/versions/{version}]/infer`) and returns the version the request
    /// is for: the URL's, else the body's. A body naming another model or version is refused
    /// with both names; the URL is the address the request was routed by.
    pub fn version_for(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Option<String>, InferError> {
        if let Some(named) = &self.model_name
            && named != model
        {
            return Err(InferError::InvalidBody {
                path: "model_name".into(),
                message: format!("{named:?} contradicts the model {model:?} of the URL"),
            });
        }
        match (&self.model_version, version) {
            (Some(named), Some(url)) if named != url => Err(InferError::InvalidBody {
                path: "model_version".into(),
                message: format!("{named:?} contradicts the version {url:?} of the URL"),
            }),
            (named, url) => Ok(url.map(str::to_owned).or_else(|| named.clone())),
        }
    }
}

/// An encoded response body and, for binary bodies, the JSON header's length.
#[derive(Debug)]
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// `Inference-Header-Content-Length`, when any output is binary.
    pub header_length: Option<usize>,
}

/// Encodes a response as JSON, or JSON header + binary tensors when an output asks for it.
pub fn encode_response(response: &InferResponse) -> EncodedResponse {
    let any_binary = response.outputs.iter().any(|(_, b)| *b);
    let mut tail = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|(t, binary)| {
            let mut parameters = t.parameters.clone();
            let data = if *binary {
                let before = tail.len();
                t.data.write_binary(&mut tail);
                parameters
                    .get_or_insert_with(Parameters::new)
                    .insert(BINARY_DATA_SIZE.into(), (tail.len() - before).into());
                None
            } else {
                Some(t.data.to_json())
            };
            WireResponseOutput {
                name: &t.name,
                datatype: t.data.datatype().as_str(),
                shape: &t.shape,
                parameters,
                data,
            }
        })
        .collect();
    let wire = WireResponse {
        model_name: &response.model_name,
        model_version: response.model_version.as_deref(),
        id: response.id.as_deref(),
        parameters: response.parameters.as_ref(),
        outputs,
    };
    // Serializing plain data structures cannot fail.
    let mut body = serde_json::to_vec(&wire).unwrap_or_default();
    if !any_binary {
        return EncodedResponse {
            body,
            header_length: None,
        };
    }
    let header_length = body.len();
    body.extend_from_slice(&tail);
    EncodedResponse {
        body,
        header_length: Some(header_length),
    }
}

#[derive(Deserialize)]
struct V1Request {
    instances: Vec<serde_json::Value>,
}

/// Decodes a KServe v1 `{"instances": [...]}` body into the model's first input: one row
/// per instance (text for BYTES models, numbers or nested numbers otherwise).
pub fn decode_v1(body: &[u8], metadata: &ModelMetadata) -> Result<InferRequest, InferError> {
    let wire: V1Request = parse_json(body)?;
    let input = metadata
        .inputs
        .first()
        .ok_or_else(|| InferError::InvalidBody {
            path: "instances".into(),
            message: "the model has no inputs".into(),
        })?;
    let invalid = |message: String| InferError::InvalidInput {
        tensor: input.name.clone(),
        message,
    };
    let datatype = DataType::parse(&input.datatype)
        .ok_or_else(|| invalid(format!("unsupported datatype {}", input.datatype)))?;
    let rows = wire.instances.len();
    let mut data = TensorData::with_capacity(datatype, rows);
    let mut per_row = None;
    for (i, instance) in wire.instances.iter().enumerate() {
        let row =
            TensorData::from_json(datatype, instance, count_leaves(instance)).map_err(|m| {
                InferError::InvalidBody {
                    path: format!("instances[{i}]"),
                    message: m,
                }
            })?;
        match per_row {
            None => per_row = Some(row.len()),
            Some(n) if n != row.len() => {
                return Err(InferError::InvalidBody {
                    path: format!("instances[{i}]"),
                    message: format!("has {} elements, instance 0 has {n}", row.len()),
                });
            }
            Some(_) => {}
        }
        data.extend_from(&row);
    }
    let per_row = per_row.unwrap_or(0);
    let shape = if input.shape.len() <= 1 {
        if per_row > 1 {
            return Err(invalid(format!(
                "each instance must be one element (input shape {:?}), got {per_row}",
                input.shape
            )));
        }
        vec![rows]
    } else {
        vec![rows, per_row]
    };
    Ok(InferRequest {
        id: None,
        model_name: None,
        model_version: None,
        ignored_fields: (Vec::new(), 0),
        parameters: None,
        inputs: vec![NamedTensor::new(input.name.clone(), shape, data)],
        outputs: metadata.outputs.first().map(|o| {
            vec![RequestedOutput {
                name: o.name.clone(),
                binary: false,
            }]
        }),
        binary_output: false,
    })
}

fn count_leaves(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => items.iter().map(count_leaves).sum(),
        _ => 1,
    }
}

/// Encodes the first output as KServe v1 `{"predictions": [...]}`, one entry per row.
pub fn encode_v1(response: &InferResponse) -> serde_json::Value {
    let predictions = match response.outputs.first() {
        None => Vec::new(),
        Some((t, _)) => {
            let flat = match t.data.to_json() {
                serde_json::Value::Array(v) => v,
                other => vec![other],
            };
            match t.shape.as_slice() {
                [] | [_] => flat,
                [rows, ..] => {
                    let per_row = if *rows == 0 { 0 } else { flat.len() / rows };
                    let inner = &t.shape[1..];
                    flat.chunks(per_row.max(1))
                        .map(|c| nest(c, inner))
                        .collect()
                }
            }
        }
    };
    serde_json::json!({ "predictions": predictions })
}

/// Nests a flat row-major slice into arrays of `shape`.
fn nest(flat: &[serde_json::Value], shape: &[usize]) -> serde_json::Value {
    match shape {
        [] | [_] => serde_json::Value::Array(flat.to_vec()),
        [first, rest @ ..] => {
            let step = flat.len() / (*first).max(1);
            serde_json::Value::Array(flat.chunks(step.max(1)).map(|c| nest(c, rest)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorMetadata;
    use serde_json::json;

    fn body_with_binary(header: &serde_json::Value, raw: &[u8]) -> (Vec<u8>, usize) {
        let mut body = serde_json::to_vec(header).unwrap();
        let n = body.len();
        body.extend_from_slice(raw);
        (body, n)
    }

    #[test]
    fn json_request_decodes_with_id_parameters_and_outputs() {
        let req = decode_request(
            br#"{"id": "r1", "parameters": {"k": [1, "x"], "binary_data_output": true},
                 "inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}],
                 "outputs": [{"name": "o", "parameters": {"binary_data": false}}, {"name": "p"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.parameters.as_ref().unwrap()["k"], json!([1, "x"]));
        assert_eq!(req.inputs[0].data, TensorData::Int32(vec![1, 2, 3, 4]));
        assert_eq!(req.inputs[0].shape, vec![2, 2]);
        let outs = req.outputs.unwrap();
        assert!(!outs[0].binary);
        assert!(
            outs[1].binary,
            "binary_data_output applies to outputs without binary_data"
        );
    }

    #[test]
    fn body_may_name_the_model_and_carry_unknown_fields() {
        // What the kserve SDK's InferRequest.to_rest() sends, plus fields of other clients.
        let req = decode_request(
            br#"{"id": "u", "model_name": "iris", "model_version": null, "x-extra": {"a": [1]},
                 "inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}],
                 "trace": null}"#,
            None,
        )
        .unwrap();
        assert_eq!(req.model_name.as_deref(), Some("iris"));
        assert_eq!(req.model_version, None);
        assert_eq!(
            req.ignored_fields,
            (vec!["x-extra".to_owned(), "trace".to_owned()], 2)
        );
        assert_eq!(req.version_for("iris", None).unwrap(), None);
        assert_eq!(
            req.version_for("iris", Some("3")).unwrap().as_deref(),
            Some("3")
        );
        assert_eq!(
            req.version_for("other", None).unwrap_err().to_string(),
            "invalid request body at model_name: \"iris\" contradicts the model \"other\" of the URL"
        );

        let req = decode_request(
            br#"{"model_name": "", "model_version": "2", "inputs": []}"#,
            None,
        )
        .unwrap();
        assert_eq!(req.model_name, None, "an empty name is no name, as in gRPC");
        assert_eq!(req.version_for("m", None).unwrap().as_deref(), Some("2"));
        assert_eq!(
            req.version_for("m", Some("2")).unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(
            req.version_for("m", Some("1")).unwrap_err().to_string(),
            "invalid request body at model_version: \"2\" contradicts the version \"1\" of the URL"
        );

        // Many unknown fields: a few names are kept, all are counted.
        let mut body = String::from(r#"{"inputs": []"#);
        for i in 0..100 {
            body.push_str(&format!(r#", "f{i}": [{i}]"#));
        }
        body.push('}');
        let req = decode_request(body.as_bytes(), None).unwrap();
        assert_eq!(req.ignored_fields.0.len(), MAX_IGNORED_NAMES);
        assert_eq!(req.ignored_fields.0[0], "f0");
        assert_eq!(req.ignored_fields.1, 100);
    }

    #[test]
    fn binary_request_decodes_in_order() {
        let mut raw = Vec::new();
        raw.extend(1.5f32.to_le_bytes());
        raw.extend(2.5f32.to_le_bytes());
        raw.extend([3, 0, 0, 0]);
        raw.extend(b"abc");
        let header = json!({"inputs": [
            {"name": "f", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}]});
        let (body, n) = body_with_binary(&header, &raw);
        let req = decode_request(&body, Some(n)).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.5, 2.5]));
        assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"abc".to_vec()]));
    }

    #[test]
    fn request_errors_name_the_field_or_tensor() {
        let cases: Vec<(Vec<u8>, Option<usize>, &str)> = vec![
            (b"not json".to_vec(), None, "invalid request body at body:"),
            (
                br#"{"inputs": [{"name": "x", "shape": "2", "datatype": "FP32", "data": []}]}"#.to_vec(),
                None,
                "invalid request body at inputs[0].shape:",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}"#.to_vec(),
                None,
                "input \"x\": datatype \"FP8\" is not one of",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [1.0]}]}"#.to_vec(),
                None,
                "input \"x\": FP16 cannot be sent as JSON numbers",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}"#.to_vec(),
                None,
                "input \"x\": shape needs 4 elements, data has 3 (shape [2, 2])",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}"#.to_vec(),
                None,
                "input \"x\": shape [-1] has a negative dimension",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}"#.to_vec(),
                None,
                "input \"x\": has neither data nor parameters.binary_data_size",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"binary_data_size": 4}}]}"#.to_vec(),
                None,
                "input \"x\": has both JSON data and parameters.binary_data_size",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "4"}}]}"#.to_vec(),
                None,
                "invalid request body at inputs[0].parameters.binary_data_size: expected a byte count",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}"#.to_vec(),
                None,
                "input \"x\": the input appears more than once",
            ),
            (
                br#"{"inputs": [], "parameters": {"binary_data_output": 1}}"#.to_vec(),
                None,
                "invalid request body at body.parameters.binary_data_output: expected a boolean",
            ),
            (
                br#"{"inputs": [], "id": "a", "id": "b"}"#.to_vec(),
                None,
                "invalid request body at body: duplicate field `id`",
            ),
            (
                br#"{"id": "a"}"#.to_vec(),
                None,
                "invalid request body at body: missing field `inputs`",
            ),
            (
                br#"[[]]"#.to_vec(),
                None,
                "invalid request body at body: invalid type: sequence, expected an inference request object",
            ),
            (
                br#"{"inputs": [], "model_name": 7}"#.to_vec(),
                None,
                "invalid request body at model_name: invalid type: integer `7`, expected a string",
            ),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "extra": 1}]}"#.to_vec(),
                None,
                "invalid request body at inputs[0].extra: unknown field `extra`",
            ),
            (b"{}".to_vec(), Some(10), "header Inference-Header-Content-Length: 10 exceeds the body length 2"),
        ];
        for (body, n, want) in cases {
            let err = decode_request(&body, n).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        let header = json!({"inputs": [{"name": "f", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]});
        let (body, n) = body_with_binary(&header, &[0; 4]);
        let err = decode_request(&body, Some(n)).unwrap_err().to_string();
        assert_eq!(
            err,
            "input \"f\": binary_data_size 8 exceeds the 4 bytes of binary data left in the body"
        );
        let (body, n) = body_with_binary(&header, &[0; 12]);
        let err = decode_request(&body, Some(n)).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid request body at body: 4 bytes of binary data follow the JSON header but no input claims them"
        );
        let header = json!({"inputs": [{"name": "f", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]});
        let (body, n) = body_with_binary(&header, &[0; 4]);
        let err = decode_request(&body, Some(n)).unwrap_err().to_string();
        assert!(
            err.starts_with("input \"f\": shape needs 2 elements of 4 bytes"),
            "{err}"
        );
        assert!(parse_header_length(b"x1").is_err());
        assert_eq!(parse_header_length(b" 12 ").unwrap(), 12);
    }

    #[test]
    fn responses_encode_json_and_binary() {
        let out = NamedTensor::new("o", vec![2], TensorData::Fp32(vec![1.0, 2.0]));
        let mut resp = InferResponse {
            model_name: "m".into(),
            model_version: None,
            id: Some("r".into()),
            parameters: None,
            outputs: vec![(out.clone(), false)],
        };
        let enc = encode_response(&resp);
        assert_eq!(enc.header_length, None);
        let v: serde_json::Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(
            v,
            json!({"model_name": "m", "id": "r", "outputs": [{"name": "o", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]})
        );
        resp.outputs[0].1 = true;
        let enc = encode_response(&resp);
        let n = enc.header_length.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(v["outputs"][0].get("data").is_none());
        assert_eq!(
            TensorData::from_binary(DataType::Fp32, &enc.body[n..], 2).unwrap(),
            out.data
        );
    }

    #[test]
    fn v1_instances_become_rows_and_predictions() {
        let meta = ModelMetadata {
            name: "m".into(),
            versions: vec![],
            platform: "p".into(),
            inputs: vec![TensorMetadata {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 2],
            }],
            outputs: vec![TensorMetadata {
                name: "y".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 2],
            }],
        };
        let req = decode_v1(br#"{"instances": [[1, 2], [3, 4]]}"#, &meta).unwrap();
        assert_eq!(req.inputs[0].shape, vec![2, 2]);
        assert_eq!(
            req.inputs[0].data,
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])
        );
        let err = decode_v1(br#"{"instances": [[1, 2], [3]]}"#, &meta).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid request body at instances[1]: has 1 elements, instance 0 has 2"
        );
        let err = decode_v1(br#"{"inputs": []}"#, &meta).unwrap_err();
        assert!(
            err.to_string().contains("missing field `instances`"),
            "{err}"
        );
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: None,
            id: None,
            parameters: None,
            outputs: vec![(
                NamedTensor::new("y", vec![2, 2], TensorData::Int64(vec![1, 2, 3, 4])),
                false,
            )],
        };
        assert_eq!(encode_v1(&resp), json!({"predictions": [[1, 2], [3, 4]]}));
    }
}

/// Not a coverage-guided fuzzer (cargo-fuzz needs nightly): a deterministic stream of
/// mutated bodies through both decoders, asserting only that they answer without panicking.
#[cfg(test)]
mod mutation_tests {
    use super::*;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn mutated_bodies_never_panic() {
        let mut raw = Vec::new();
        raw.extend(1.5f32.to_le_bytes());
        raw.extend([3, 0, 0, 0]);
        raw.extend(b"abc");
        let header = br#"{"id": "x", "parameters": {"binary_data_output": true}, "inputs": [{"name": "f", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}, {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}, {"name": "j", "shape": [2, 1], "datatype": "INT8", "data": [[1], [2]]}], "outputs": [{"name": "o", "parameters": {"binary_data": true}}]}"#;
        let mut seed = header.to_vec();
        seed.extend_from_slice(&raw);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let meta = ModelMetadata {
            name: "m".into(),
            versions: vec![],
            platform: "p".into(),
            inputs: vec![crate::model::tensor_meta("x", DataType::Fp32, vec![-1, 2])],
            outputs: vec![],
        };
        for round in 0..20_000 {
            let mut body = seed.clone();
            for _ in 0..(1 + rng.next() % 4) {
                let i = (rng.next() as usize) % body.len();
                match rng.next() % 3 {
                    0 => body[i] = rng.next() as u8,
                    1 => {
                        body.remove(i);
                    }
                    _ => body.insert(i, b"[]{}\",:0-9e"[(rng.next() % 11) as usize]),
                }
            }
            let split = if round % 2 == 0 {
                Some(header.len())
            } else {
                Some((rng.next() as usize) % (body.len() + 8))
            };
            let _ = decode_request(&body, split);
            let _ = decode_request(&body, None);
            let _ = decode_v1(&body, &meta);
            for dt in DataType::ALL {
                let _ = TensorData::from_binary(dt, &body[..body.len().min(64)], 3);
            }
        }
    }
}
