//! Open Inference Protocol (v2) JSON request and response bodies.

use serde::{Deserialize, Serialize};

use crate::error::InferError;

/// Free-form `parameters` object, round-tripped as given.
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// `POST /v2/models/{m}/infer` request body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Request id, echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs wanted; all when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// Datatype, e.g. `FP32`.
    pub datatype: String,
    /// Tensor parameters.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// Row-major elements, flat or nested.
    pub data: serde_json::Value,
}

/// One requested output.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// Output parameters.
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// Response body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Response parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Output tensors.
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResponseOutput {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Datatype.
    pub datatype: String,
    /// Tensor parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Row-major elements.
    pub data: TensorData,
}

/// Typed flat tensor elements.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TensorData {
    /// Integers (INT64).
    Int64(Vec<i64>),
    /// Floats (FP32).
    Fp32(Vec<f32>),
}

/// Parses a request body, naming the JSON path of any error.
pub fn parse_request(body: &[u8]) -> Result<InferRequest, InferError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        InferError::InvalidBody {
            path: if path == "." { "body".to_owned() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

impl RequestInput {
    fn invalid(&self, message: impl Into<String>) -> InferError {
        InferError::InvalidInput {
            tensor: self.name.clone(),
            message: message.into(),
        }
    }

    /// The shape as sizes, refusing negative dimensions.
    pub fn dims(&self) -> Result<Vec<usize>, InferError> {
        self.shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    self.invalid(format!("shape {:?} has a negative dimension", self.shape))
                })
            })
            .collect()
    }

    /// The elements of an FP32 tensor, flattened row-major and checked against the shape.
    pub fn to_f32(&self) -> Result<Vec<f32>, InferError> {
        if self.datatype != "FP32" {
            return Err(self.invalid(format!(
                "datatype is {}, the model expects FP32",
                self.datatype
            )));
        }
        let dims = self.dims()?;
        let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let expected = expected.ok_or_else(|| self.invalid("shape is too large"))?;
        let mut out = Vec::with_capacity(expected.min(1 << 20));
        flatten_numbers(&self.data, &mut out, expected).map_err(|m| self.invalid(m))?;
        if out.len() != expected {
            return Err(self.invalid(format!(
                "shape {:?} needs {expected} elements, data has {}",
                self.shape,
                out.len()
            )));
        }
        Ok(out)
    }
}

fn flatten_numbers(
    value: &serde_json::Value,
    out: &mut Vec<f32>,
    limit: usize,
) -> Result<(), String> {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                flatten_numbers(item, out, limit)?;
            }
            Ok(())
        }
        serde_json::Value::Number(n) => {
            if out.len() >= limit {
                return Err(format!(
                    "data has more than the {limit} elements its shape allows"
                ));
            }
            let x = n
                .as_f64()
                .ok_or_else(|| format!("{n} is not representable as FP32"))?;
            out.push(x as f32);
            Ok(())
        }
        other => Err(format!("data holds {other}, expected FP32 numbers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> RequestInput {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn nested_and_flat_data_flatten_alike() {
        let nested = input(
            serde_json::json!({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}),
        );
        let flat = input(
            serde_json::json!({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4.5]}),
        );
        assert_eq!(nested.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.5]);
        assert_eq!(flat.to_f32().unwrap(), nested.to_f32().unwrap());
    }

    #[test]
    fn errors_name_the_tensor() {
        let short = input(
            serde_json::json!({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}),
        );
        assert_eq!(
            short.to_f32().unwrap_err().to_string(),
            "input \"x\": shape [2, 2] needs 4 elements, data has 3"
        );
        let text = input(
            serde_json::json!({"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}),
        );
        assert!(
            text.to_f32()
                .unwrap_err()
                .to_string()
                .contains("expected FP32 numbers")
        );
        let fp64 =
            input(serde_json::json!({"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}));
        assert!(
            fp64.to_f32()
                .unwrap_err()
                .to_string()
                .contains("the model expects FP32")
        );
        let neg =
            input(serde_json::json!({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}));
        assert!(
            neg.to_f32()
                .unwrap_err()
                .to_string()
                .contains("negative dimension")
        );
    }

    #[test]
    fn body_errors_name_the_field() {
        let err = parse_request(
            br#"{"inputs": [{"name": "x", "shape": "2", "datatype": "FP32", "data": []}]}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid request body at inputs[0].shape:"),
            "{err}"
        );
        let err = parse_request(b"not json").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid request body at body:"),
            "{err}"
        );
    }
}
