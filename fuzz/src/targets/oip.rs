//! The model server's REST bodies: OIP v2 JSON (`POST /v2/models/{m}/infer`), the same with
//! the binary tensor extension (`Inference-Header-Content-Length`), and KServe v1
//! `:predict`. Each goes where the handlers in `model-server/src/http.rs` send it: decode,
//! the body's model/version against the URL's, validation against the model's metadata;
//! a request the real Iris model accepts is computed and its response encoded.

use std::path::Path;
use std::sync::OnceLock;

use sluice_model_server::codec::{
    InferRequest, InferResponse, decode_request, decode_v1, encode_response, parse_header_length,
};
use sluice_model_server::load_model;
use sluice_model_server::model::{Model, ModelMetadata, tensor_meta, validate_inputs};
use sluice_model_server::tensor::DataType;

use super::target::{Target, outcome};

/// Field names and values of OIP and KServe v1 bodies.
const DICTIONARY: &[&str] = &[
    "\"inputs\"",
    "\"outputs\"",
    "\"name\"",
    "\"shape\"",
    "\"datatype\"",
    "\"data\"",
    "\"parameters\"",
    "\"id\"",
    "\"model_name\"",
    "\"model_version\"",
    "\"binary_data_size\"",
    "\"binary_data\"",
    "\"binary_data_output\"",
    "\"instances\"",
    "\"input-0\"",
    "\"text\"",
    "\"iris\"",
    "\"FP32\"",
    "\"FP64\"",
    "\"FP16\"",
    "\"BF16\"",
    "\"INT8\"",
    "\"INT64\"",
    "\"UINT8\"",
    "\"UINT64\"",
    "\"BOOL\"",
    "\"BYTES\"",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[[",
    "]]",
    "\"\"",
    ",",
    ":",
    "\\u0000",
    "\\ud800",
];

/// `POST /v2/models/iris/infer` with a JSON body.
pub const JSON: Target = Target {
    name: "oip-json",
    about: "OIP v2 JSON infer body: codec::decode_request, InferRequest::version_for, \
            model::validate_inputs (Iris and a BYTES model), Iris infer, encode_response",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: load_iris,
    run: |input| infer_v2(input, None),
};

/// `POST /v2/models/iris/infer` with the binary tensor extension: the input is the
/// `Inference-Header-Content-Length` value, a newline, then the body.
pub const BINARY: Target = Target {
    name: "oip-binary",
    about: "OIP v2 binary tensor extension (header value, newline, body): \
            codec::parse_header_length, then as oip-json with the split body",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: load_iris,
    run: |input| {
        let (header, body) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (&input[..i], &input[i + 1..]),
            None => (input, &[][..]),
        };
        match parse_header_length(header) {
            Ok(n) => infer_v2(body, Some(n)),
            Err(e) => e.to_string(),
        }
    },
};

/// `POST /v1/models/{m}:predict`.
pub const KSERVE_V1: Target = Target {
    name: "kserve-v1",
    about: "KServe v1 predict body: codec::decode_v1 for Iris (FP32) and a BYTES model, \
            model::validate_inputs, Iris infer",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: load_iris,
    run: |input| {
        let Ok(iris) = iris() else {
            return super::target::NO_FIXTURE.to_owned();
        };
        let mut out = String::new();
        let request = decode_v1(input, iris.metadata());
        out += &outcome(&request);
        if let Ok(request) = request {
            out += &serve(iris, None, request);
        }
        let request = decode_v1(input, text_model());
        out += &outcome(&request);
        if let Ok(request) = request {
            out += &outcome(&validate_inputs(text_model(), &request.inputs));
        }
        out
    },
};

/// The Iris sample model (`samples/iris/model`), loaded once.
fn iris() -> Result<&'static dyn Model, String> {
    static IRIS: OnceLock<Result<Box<dyn Model>, String>> = OnceLock::new();
    super::target::fixture(&IRIS, || {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
        load_model("sluice-mlp", "iris", &dir)
            .map_err(|e| format!("cannot load {}: {e}", dir.display()))
    })
    .map(|m| m.as_ref())
}

/// `prepare` of the targets that run the Iris model.
fn load_iris() -> Result<(), String> {
    iris().map(|_| ())
}

/// The metadata of a text model (MiniLM's: one BYTES input), without its weights.
fn text_model() -> &'static ModelMetadata {
    static TEXT: OnceLock<ModelMetadata> = OnceLock::new();
    TEXT.get_or_init(|| ModelMetadata {
        name: "minilm".into(),
        versions: Vec::new(),
        platform: "sluice-candle".into(),
        inputs: vec![tensor_meta("text", DataType::Bytes, vec![-1])],
        outputs: vec![tensor_meta("embedding", DataType::Fp32, vec![-1, 384])],
    })
}

/// What `http::run_infer` does with a v2 body, for the URL `/v2/models/iris/infer` and
/// `/v2/models/iris/versions/2/infer`.
fn infer_v2(body: &[u8], header_length: Option<usize>) -> String {
    let request = decode_request(body, header_length);
    let mut out = outcome(&request);
    let Ok(request) = request else {
        return out;
    };
    out += &outcome(&request.version_for("iris", Some("2")));
    out += &outcome(&validate_inputs(text_model(), &request.inputs));
    let Ok(iris) = iris() else {
        return super::target::NO_FIXTURE.to_owned();
    };
    match request.version_for("iris", None) {
        Ok(version) => out += &serve(iris, version, request),
        Err(e) => out += &e.to_string(),
    }
    out
}

/// What `http::execute` does with a decoded request, on the Iris model: validation, the
/// requested outputs, the computation, and the response encoding.
fn serve(model: &dyn Model, version: Option<String>, request: InferRequest) -> String {
    let metadata = model.metadata();
    if let Err(e) = validate_inputs(metadata, &request.inputs) {
        return e.to_string();
    }
    if let Some(wanted) = &request.outputs
        && let Some(unknown) = wanted
            .iter()
            .find(|w| !metadata.outputs.iter().any(|o| o.name == w.name))
    {
        return format!("unknown output {}", unknown.name);
    }
    let outputs = match model.infer(&request.inputs) {
        Ok(outputs) => outputs,
        Err(e) => return e.to_string(),
    };
    let outputs = match &request.outputs {
        None => outputs
            .into_iter()
            .map(|t| (t, request.binary_output))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .filter_map(|w| {
                let t = outputs.iter().find(|o| o.name == w.name)?;
                Some((t.clone(), w.binary))
            })
            .collect(),
    };
    let encoded = encode_response(&InferResponse {
        model_name: metadata.name.clone(),
        model_version: version,
        id: request.id,
        parameters: request.parameters,
        outputs,
    });
    format!("ok {:?}", encoded.header_length.is_some())
}
