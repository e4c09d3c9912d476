//! Typed tensors of every Open Inference Protocol datatype, and their JSON encoding
//! (flat or nested `data`).
//!
//! The wire bodies (JSON header plus the binary tensor extension) live in `codec`; this
//! module only knows datatypes, element storage, shapes and JSON element lists.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::InferError;

/// Free-form `parameters` object, round-tripped as given.
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// The OIP datatypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// Boolean, one byte on the wire.
    Bool,
    /// Unsigned 8-bit.
    Uint8,
    /// Unsigned 16-bit.
    Uint16,
    /// Unsigned 32-bit.
    Uint32,
    /// Unsigned 64-bit.
    Uint64,
    /// Signed 8-bit.
    Int8,
    /// Signed 16-bit.
    Int16,
    /// Signed 32-bit.
    Int32,
    /// Signed 64-bit.
    Int64,
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
    /// IEEE single precision.
    Fp32,
    /// IEEE double precision.
    Fp64,
    /// Byte strings (UTF-8 text in JSON; 4-byte length + bytes in binary).
    Bytes,
}

impl DataType {
    /// Every datatype, in the order the spec lists them.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The spec's name (`FP32`).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a spec name.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element on the wire; `None` for BYTES (variable).
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major tensor elements, one variant per datatype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// BOOL.
    Bool(Vec<bool>),
    /// UINT8.
    Uint8(Vec<u8>),
    /// UINT16.
    Uint16(Vec<u16>),
    /// UINT32.
    Uint32(Vec<u32>),
    /// UINT64.
    Uint64(Vec<u64>),
    /// INT8.
    Int8(Vec<i8>),
    /// INT16.
    Int16(Vec<i16>),
    /// INT32.
    Int32(Vec<i32>),
    /// INT64.
    Int64(Vec<i64>),
    /// FP16.
    Fp16(Vec<f16>),
    /// BF16.
    Bf16(Vec<bf16>),
    /// FP32.
    Fp32(Vec<f32>),
    /// FP64.
    Fp64(Vec<f64>),
    /// BYTES.
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the inner vector of any variant.
macro_rules! each_variant {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Bf16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// Builds the same variant as `$like` around `$body` (a vector of the same element type).
macro_rules! same_variant {
    ($like:expr, $v:ident => $body:expr) => {
        match $like {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::Uint8($v) => TensorData::Uint8($body),
            TensorData::Uint16($v) => TensorData::Uint16($body),
            TensorData::Uint32($v) => TensorData::Uint32($body),
            TensorData::Uint64($v) => TensorData::Uint64($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int16($v) => TensorData::Int16($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::Fp16($v) => TensorData::Fp16($body),
            TensorData::Bf16($v) => TensorData::Bf16($body),
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    /// The datatype of the elements.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Bf16(_) => DataType::Bf16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty vector of `datatype` with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        let c = capacity.min(1 << 20);
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(c)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(c)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(c)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(c)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(c)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(c)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(c)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(c)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(c)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(c)),
            DataType::Bf16 => TensorData::Bf16(Vec::with_capacity(c)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(c)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(c)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(c)),
        }
    }

    /// Appends `other`'s elements; `false` (and nothing appended) when the datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        ext!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Bf16, Fp32, Fp64,
            Bytes
        )
    }

    /// Elements `start..end` as a new tensor of the same datatype.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        same_variant!(self, v => v.get(start..end).unwrap_or_default().to_vec())
    }

    /// Decodes a JSON element list (flat or nested) of `datatype`, expecting `expected`
    /// elements. Errors are messages for the caller to attach to the tensor name.
    pub fn from_json(
        datatype: DataType,
        value: &serde_json::Value,
        expected: usize,
    ) -> Result<TensorData, String> {
        if matches!(datatype, DataType::Fp16 | DataType::Bf16) {
            return Err(format!(
                "{datatype} cannot be sent as JSON numbers; use the binary tensor data extension \
                 (parameters.binary_data_size)"
            ));
        }
        // The shape is the caller's word, not the data: reserve little and let the data grow
        // it, so a short body declaring a huge shape costs nothing.
        let mut out = TensorData::with_capacity(datatype, expected.min(4096));
        push_json(&mut out, value, expected)?;
        if out.len() != expected {
            return Err(format!(
                "shape needs {expected} elements, data has {}",
                out.len()
            ));
        }
        Ok(out)
    }

    /// The elements as JSON values (flat). FP16/BF16 become numbers, BYTES become strings
    /// (invalid UTF-8 is replaced).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        let values: Vec<Value> = match self {
            TensorData::Bool(v) => v.iter().map(|&x| Value::Bool(x)).collect(),
            TensorData::Uint8(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Uint16(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Uint32(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Uint64(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Int8(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Int16(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| Value::from(x)).collect(),
            TensorData::Fp16(v) => v.iter().map(|&x| float(f64::from(x))).collect(),
            TensorData::Bf16(v) => v.iter().map(|&x| float(f64::from(x))).collect(),
            TensorData::Fp32(v) => v.iter().map(|&x| float(f64::from(x))).collect(),
            TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect(),
            TensorData::Bytes(v) => v
                .iter()
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        };
        Value::Array(values)
    }

    /// Encodes the elements little-endian (BYTES: 4-byte length then the bytes), appending
    /// to `out`.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Uint16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Uint32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Uint64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Int8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Int16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Int32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Int64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Fp16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Bf16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Fp32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Fp64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            TensorData::Bytes(v) => {
                for b in v {
                    // Elements come from bounded bodies or model outputs; > 4 GiB cannot occur.
                    out.extend(u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    /// Size of [`TensorData::write_binary`]'s output.
    pub fn binary_size(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v.iter().map(|b| 4 + b.len()).sum(),
            other => other.len() * other.datatype().element_size().unwrap_or(1),
        }
    }

    /// Decodes `expected` elements of `datatype` from raw little-endian bytes.
    pub fn from_binary(
        datatype: DataType,
        raw: &[u8],
        expected: usize,
    ) -> Result<TensorData, String> {
        if datatype == DataType::Bytes {
            // Each element takes at least its 4-byte length: no more can be in `raw`.
            let mut items = Vec::with_capacity(expected.min(raw.len() / 4));
            let mut rest = raw;
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(format!(
                        "BYTES element {} has a truncated 4-byte length prefix",
                        items.len()
                    ));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if len > tail.len() {
                    return Err(format!(
                        "BYTES element {} declares {len} bytes but only {} remain",
                        items.len(),
                        tail.len()
                    ));
                }
                items.push(tail[..len].to_vec());
                rest = &tail[len..];
            }
            if items.len() != expected {
                return Err(format!(
                    "shape needs {expected} elements, binary data holds {}",
                    items.len()
                ));
            }
            return Ok(TensorData::Bytes(items));
        }
        let size = datatype.element_size().unwrap_or(1);
        let wanted = expected.checked_mul(size).ok_or("shape is too large")?;
        if raw.len() != wanted {
            return Err(format!(
                "shape needs {expected} elements of {size} bytes ({wanted} bytes), binary data \
                 has {} bytes",
                raw.len()
            ));
        }
        macro_rules! le {
            ($t:ty, $n:literal) => {
                raw.chunks_exact($n)
                    .map(|c| {
                        let mut b = [0u8; $n];
                        b.copy_from_slice(c);
                        <$t>::from_le_bytes(b)
                    })
                    .collect()
            };
        }
        Ok(match datatype {
            DataType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
            DataType::Uint8 => TensorData::Uint8(raw.to_vec()),
            DataType::Uint16 => TensorData::Uint16(le!(u16, 2)),
            DataType::Uint32 => TensorData::Uint32(le!(u32, 4)),
            DataType::Uint64 => TensorData::Uint64(le!(u64, 8)),
            DataType::Int8 => TensorData::Int8(le!(i8, 1)),
            DataType::Int16 => TensorData::Int16(le!(i16, 2)),
            DataType::Int32 => TensorData::Int32(le!(i32, 4)),
            DataType::Int64 => TensorData::Int64(le!(i64, 8)),
            DataType::Fp16 => TensorData::Fp16(le!(f16, 2)),
            DataType::Bf16 => TensorData::Bf16(le!(bf16, 2)),
            DataType::Fp32 => TensorData::Fp32(le!(f32, 4)),
            DataType::Fp64 => TensorData::Fp64(le!(f64, 8)),
            DataType::Bytes => unreachable_bytes(),
        })
    }

    /// The elements as `f32` (numeric types; BOOL as 0/1). `None` for BYTES.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        Some(match self {
            TensorData::Bool(v) => v.iter().map(|&b| f32::from(u8::from(b))).collect(),
            TensorData::Uint8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TensorData::Uint16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TensorData::Uint32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Uint64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Int8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TensorData::Int16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Fp16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TensorData::Bf16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            TensorData::Fp32(v) => v.clone(),
            TensorData::Fp64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bytes(_) => return None,
        })
    }
}

/// BYTES is handled before the fixed-size match; this arm exists for exhaustiveness.
fn unreachable_bytes() -> TensorData {
    TensorData::Bytes(Vec::new())
}

fn float(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn push_json(out: &mut TensorData, value: &serde_json::Value, limit: usize) -> Result<(), String> {
    use serde_json::Value;
    if let Value::Array(items) = value {
        for item in items {
            push_json(out, item, limit)?;
        }
        return Ok(());
    }
    if out.len() >= limit {
        return Err(format!(
            "data has more than the {limit} elements its shape allows"
        ));
    }
    let dt = out.datatype();
    let bad = || format!("data holds {value}, which is not a valid {dt} element");
    fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Option<T> {
        match v {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    T::try_from(i).ok()
                } else {
                    n.as_u64().and_then(|u| T::try_from(u).ok())
                }
            }
            _ => None,
        }
    }
    match out {
        TensorData::Bool(v) => v.push(value.as_bool().ok_or_else(bad)?),
        TensorData::Uint8(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Uint16(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Uint32(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Uint64(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Int8(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Int16(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Int32(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Int64(v) => v.push(int(value).ok_or_else(bad)?),
        TensorData::Fp32(v) => v.push(value.as_f64().ok_or_else(bad)? as f32),
        TensorData::Fp64(v) => v.push(value.as_f64().ok_or_else(bad)?),
        TensorData::Bytes(v) => v.push(value.as_str().ok_or_else(bad)?.as_bytes().to_vec()),
        TensorData::Fp16(_) | TensorData::Bf16(_) => return Err(bad()),
    }
    Ok(())
}

/// A named tensor with its shape: a decoded request input or a computed output.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Tensor name.
    pub name: String,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Tensor parameters (round-tripped).
    pub parameters: Option<Parameters>,
    /// Elements.
    pub data: TensorData,
}

impl NamedTensor {
    /// A tensor without parameters.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Self {
        Self {
            name: name.into(),
            shape,
            parameters: None,
            data,
        }
    }

    /// The datatype.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// An `InvalidInput` error naming this tensor.
    pub fn invalid(&self, message: impl Into<String>) -> InferError {
        InferError::InvalidInput {
            tensor: self.name.clone(),
            message: message.into(),
        }
    }
}

/// Number of elements a shape holds, `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A shape from the wire, refusing negative dimensions.
pub fn shape_from_wire(shape: &[i64]) -> Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("shape {shape:?} has a negative dimension"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_datatype_roundtrips_json_and_binary() {
        let samples: Vec<(DataType, serde_json::Value)> = vec![
            (DataType::Bool, json!([true, false])),
            (DataType::Uint8, json!([0, 255])),
            (DataType::Uint16, json!([0, 65535])),
            (DataType::Uint32, json!([0, 4294967295u64])),
            (DataType::Uint64, json!([0, u64::MAX])),
            (DataType::Int8, json!([-128, 127])),
            (DataType::Int16, json!([-32768, 32767])),
            (DataType::Int32, json!([i32::MIN, i32::MAX])),
            (DataType::Int64, json!([i64::MIN, i64::MAX])),
            (DataType::Fp32, json!([1.5, -2.25])),
            (DataType::Fp64, json!([1e300, -0.5])),
            (DataType::Bytes, json!(["héllo", ""])),
        ];
        for (dt, value) in samples {
            let t = TensorData::from_json(dt, &value, 2).unwrap();
            assert_eq!(t.datatype(), dt);
            assert_eq!(t.to_json(), value, "{dt}");
            let mut raw = Vec::new();
            t.write_binary(&mut raw);
            assert_eq!(raw.len(), t.binary_size());
            assert_eq!(TensorData::from_binary(dt, &raw, 2).unwrap(), t, "{dt}");
        }
        for dt in [DataType::Fp16, DataType::Bf16] {
            let raw = [0x00, 0x3c, 0x00, 0xc0];
            let t = TensorData::from_binary(dt, &raw, 2).unwrap();
            let mut back = Vec::new();
            t.write_binary(&mut back);
            assert_eq!(back, raw);
        }
        assert_eq!(
            TensorData::from_binary(DataType::Fp16, &[0x00, 0x3c], 1)
                .unwrap()
                .to_json(),
            json!([1.0])
        );
    }

    #[test]
    fn nested_and_flat_json_decode_alike() {
        let nested = TensorData::from_json(DataType::Fp32, &json!([[1, 2], [3, 4.5]]), 4);
        let flat = TensorData::from_json(DataType::Fp32, &json!([1, 2, 3, 4.5]), 4);
        assert_eq!(nested, flat);
        assert_eq!(nested.unwrap(), TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.5]));
    }

    #[test]
    fn json_errors_say_what_is_wrong() {
        let err = TensorData::from_json(DataType::Fp16, &json!([1.0]), 1).unwrap_err();
        assert!(
            err.starts_with("FP16 cannot be sent as JSON numbers"),
            "{err}"
        );
        let err = TensorData::from_json(DataType::Bf16, &json!([1.0]), 1).unwrap_err();
        assert!(
            err.starts_with("BF16 cannot be sent as JSON numbers"),
            "{err}"
        );
        let err = TensorData::from_json(DataType::Uint8, &json!([256]), 1).unwrap_err();
        assert_eq!(err, "data holds 256, which is not a valid UINT8 element");
        let err = TensorData::from_json(DataType::Int32, &json!([1.5]), 1).unwrap_err();
        assert_eq!(err, "data holds 1.5, which is not a valid INT32 element");
        let err = TensorData::from_json(DataType::Bool, &json!([1]), 1).unwrap_err();
        assert_eq!(err, "data holds 1, which is not a valid BOOL element");
        let err = TensorData::from_json(DataType::Bytes, &json!([1]), 1).unwrap_err();
        assert_eq!(err, "data holds 1, which is not a valid BYTES element");
        let err = TensorData::from_json(DataType::Fp32, &json!([1, 2, 3]), 4).unwrap_err();
        assert_eq!(err, "shape needs 4 elements, data has 3");
        let err = TensorData::from_json(DataType::Fp32, &json!([1, 2, 3]), 2).unwrap_err();
        assert_eq!(err, "data has more than the 2 elements its shape allows");
    }

    #[test]
    fn binary_errors_say_what_is_wrong() {
        let err = TensorData::from_binary(DataType::Fp32, &[0; 7], 2).unwrap_err();
        assert_eq!(
            err,
            "shape needs 2 elements of 4 bytes (8 bytes), binary data has 7 bytes"
        );
        let err = TensorData::from_binary(DataType::Bytes, &[5, 0, 0, 0, b'a'], 1).unwrap_err();
        assert_eq!(err, "BYTES element 0 declares 5 bytes but only 1 remain");
        let err = TensorData::from_binary(DataType::Bytes, &[1, 0], 1).unwrap_err();
        assert_eq!(err, "BYTES element 0 has a truncated 4-byte length prefix");
        let err = TensorData::from_binary(DataType::Bytes, &[0, 0, 0, 0], 2).unwrap_err();
        assert_eq!(err, "shape needs 2 elements, binary data holds 1");
    }

    #[test]
    fn slices_and_extends() {
        let mut a = TensorData::Int64(vec![1, 2]);
        assert!(a.extend_from(&TensorData::Int64(vec![3])));
        assert!(!a.extend_from(&TensorData::Fp32(vec![3.0])));
        assert_eq!(a.slice(1, 3), TensorData::Int64(vec![2, 3]));
        assert_eq!(
            shape_from_wire(&[2, -1]).unwrap_err(),
            "shape [2, -1] has a negative dimension"
        );
    }
}
