//! The embedding APIs people already call, beside KServe v1 and OIP: OpenAI's
//! `POST /v1/embeddings` (also at `/openai/v1/embeddings`, where KServe's Hugging Face
//! runtime serves it) and text-embeddings-inference's `POST /embed` (also `POST /`, where
//! TEI answers clients that post to the bare URL) and `POST /tokenize`.
//!
//! Each speaks its protocol's request, response and error shapes. Bad input is a 400 naming
//! the field; an input over the model's token limit is refused unless the request asks to
//! cut it (`truncate`, TEI); a list over [`MAX_INPUTS`] is refused. Embeddings go through the
//! model's batcher like OIP requests (with the timer batcher, `max_batch_tokens` = 0, TEI's
//! `normalize: false` is computed on its own, off the reactor). A full queue is a 429 in the
//! protocol's shape, with `Retry-After`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::{InferError, RETRY_AFTER_SECONDS};
use crate::model::{TextEmbedder, Token};
use crate::repository::ServedModel;
use crate::service::AppState;

/// Most texts in one request.
pub const MAX_INPUTS: usize = 2048;

/// What went wrong, before it is put in a protocol's error shape.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    /// The request field at fault (`input`, `input[3]`, `encoding_format`), if one is.
    param: Option<String>,
    message: String,
    /// OpenAI's `code` (`model_not_found`).
    code: Option<&'static str>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.param {
            Some(param) => write!(f, "{} {param}: {}", self.status.as_u16(), self.message),
            None => write!(f, "{} {}", self.status.as_u16(), self.message),
        }
    }
}

impl Refusal {
    fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            param: Some(param.into()),
            message: message.into(),
            code: None,
        }
    }

    fn from_infer(e: InferError) -> Self {
        let (status, message) = match &e {
            // As the embedding services answer a full queue: retry later.
            InferError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            // candle's errors can carry a backtrace: the client gets the first line.
            InferError::Compute(inner) => {
                let text = inner.to_string();
                tracing::warn!("inference failed: {text}");
                (
                    e.status(),
                    format!(
                        "inference failed: {}",
                        text.lines().next().unwrap_or_default()
                    ),
                )
            }
            _ => (e.status(), sluice_core::error_chain(&e)),
        };
        Self {
            status,
            param: None,
            message,
            code: None,
        }
    }

    /// OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`; a 429 as
    /// OpenAI's own (`type: requests`, `code: rate_limit_exceeded`), with `Retry-After`.
    fn openai(mut self) -> Response {
        let kind = if self.status == StatusCode::TOO_MANY_REQUESTS {
            self.code = self.code.or(Some("rate_limit_exceeded"));
            "requests"
        } else if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }});
        self.with_retry_after((self.status, Json(body)).into_response())
    }

    /// Adds `Retry-After` to the answer to a full queue.
    fn with_retry_after(&self, mut resp: Response) -> Response {
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        resp
    }

    /// text-embeddings-inference's error shape: `{"error", "error_type"}`.
    fn tei(self) -> Response {
        let kind = match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "Validation",
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => "Overloaded",
            StatusCode::NOT_FOUND => "Validation",
            _ => "Backend",
        };
        let message = match &self.param {
            Some(param) => format!("{param}: {}", self.message),
            None => self.message.clone(),
        };
        let body = Json(json!({"error": message, "error_type": kind}));
        self.with_retry_after((self.status, body).into_response())
    }
}

/// The request body, or why it could not be read (too large → 413).
fn read(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Refusal> {
    body.map_err(|rejection| Refusal {
        status: rejection.status(),
        param: None,
        message: format!("cannot read the request body: {}", rejection.body_text()),
        code: None,
    })
}

/// Parses a JSON body into `T`, naming the field at fault.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Refusal> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." { "body".to_owned() } else { path };
        Refusal::bad(param, e.into_inner().to_string())
    })
}

/// One text or a list of them, as both protocols take `input`/`inputs`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<Value>),
}

impl Texts {
    /// The texts; `field` names the request field in errors.
    fn into_vec(self, field: &str) -> Result<Vec<String>, Refusal> {
        let texts = match self {
            Texts::One(text) => vec![text],
            Texts::Many(items) => {
                if items.len() > MAX_INPUTS {
                    return Err(Refusal::bad(
                        field,
                        format!(
                            "{} texts in one request, more than the {MAX_INPUTS} allowed",
                            items.len()
                        ),
                    ));
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::String(text) => Ok(text),
                        Value::Number(_) | Value::Array(_) => Err(Refusal::bad(
                            format!("{field}[{i}]"),
                            "token arrays are not taken: send the text",
                        )),
                        other => Err(Refusal::bad(
                            format!("{field}[{i}]"),
                            format!("expected a string, got {other}"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        if texts.is_empty() {
            return Err(Refusal::bad(field, "must not be empty"));
        }
        if let Some(i) = texts.iter().position(String::is_empty) {
            return Err(Refusal::bad(
                element(field, i, texts.len()),
                "must not be an empty string",
            ));
        }
        Ok(texts)
    }
}

/// How errors name text `i` of `count` sent in `field`: the field itself for one text.
fn element(field: &str, i: usize, count: usize) -> String {
    if count == 1 {
        field.to_owned()
    } else {
        format!("{field}[{i}]")
    }
}

/// The model named `name`, or with none named the one text-embedding model served here (the
/// first by name when there are several).
fn embedding_model(state: &AppState, name: Option<&str>) -> Result<Arc<ServedModel>, Refusal> {
    let not_found = |message: String| Refusal {
        status: StatusCode::NOT_FOUND,
        param: Some("model".into()),
        message,
        code: Some("model_not_found"),
    };
    let served = match name {
        Some(name) => state
            .repository
            .get(name)
            .map_err(|_| not_found(format!("the model `{name}` does not exist or is not ready")))?,
        None => {
            let mut ready = state.repository.ready_models();
            ready.sort_by(|a, b| a.0.cmp(&b.0));
            ready
                .into_iter()
                .map(|(_, served)| served)
                .find(|s| s.model.text_embedder().is_some())
                .ok_or_else(|| not_found("no model here serves embeddings".into()))?
        }
    };
    if served.model.text_embedder().is_none() {
        return Err(Refusal::bad(
            "model",
            format!(
                "the model `{}` does not turn text into embeddings",
                served.model.metadata().name
            ),
        ));
    }
    Ok(served)
}

fn embedder(served: &ServedModel) -> Result<&dyn TextEmbedder, Refusal> {
    served
        .model
        .text_embedder()
        .ok_or_else(|| Refusal::bad("model", "not a text-embedding model"))
}

/// Each text's token count (special tokens included) cut to the model's maximum; with
/// `truncate` off, a text over the model's limit is refused, naming it.
fn count_tokens(
    embedder: &dyn TextEmbedder,
    texts: &[String],
    field: &str,
    truncate: bool,
) -> Result<Vec<usize>, Refusal> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let counts = embedder.count_tokens(&refs).map_err(Refusal::from_infer)?;
    let max = embedder.max_tokens();
    let mut capped = Vec::with_capacity(counts.len());
    for (i, &n) in counts.iter().enumerate() {
        if n > max && !truncate {
            return Err(Refusal::bad(
                element(field, i, texts.len()),
                format!("{n} tokens, more than the model's maximum of {max}"),
            ));
        }
        capped.push(n.min(max));
    }
    Ok(capped)
}

/// Embeddings, one row per text, through the model's batcher (`tokens`: each text's, cut to
/// the model's maximum).
async fn embed(
    served: &ServedModel,
    texts: Vec<String>,
    tokens: Vec<usize>,
    normalize: bool,
) -> Result<Vec<Vec<f32>>, Refusal> {
    let dims = embedder(served)?.dimensions();
    let rows = texts.len();
    let started = Instant::now();
    let flat = served
        .executor
        .embed(texts, tokens, normalize)
        .await
        .map_err(Refusal::from_infer)?;
    served.metrics.predict.observe_duration(started.elapsed());
    if flat.len() != rows * dims {
        return Err(Refusal::from_infer(InferError::Task(format!(
            "the model answered {} values for {rows} texts of {dims} dimensions",
            flat.len()
        ))));
    }
    Ok(flat.chunks(dims).map(<[f32]>::to_vec).collect())
}

/// OpenAI's embeddings request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiBody {
    input: Texts,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

/// OpenAI's embeddings request, checked.
#[derive(Debug)]
pub struct OpenAiRequest {
    /// The texts, none empty, at most [`MAX_INPUTS`].
    pub texts: Vec<String>,
    /// The model asked for (`None`: the one that serves embeddings).
    pub model: Option<String>,
    /// `encoding_format: base64`: each vector as base64 of little-endian f32s.
    pub base64: bool,
    /// The width asked for, if any.
    pub dimensions: Option<usize>,
}

/// Decodes and checks OpenAI's body; errors name the field.
pub fn decode_openai(body: &[u8]) -> Result<OpenAiRequest, Refusal> {
    let body: OpenAiBody = parse(body)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Refusal::bad(
                "encoding_format",
                format!("{other:?} is not one of \"float\", \"base64\""),
            ));
        }
    };
    Ok(OpenAiRequest {
        texts: body.input.into_vec("input")?,
        model: body.model,
        base64,
        dimensions: body.dimensions,
    })
}

/// `POST /v1/embeddings` and `/openai/v1/embeddings`.
pub async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    openai(&state, body).await.unwrap_or_else(Refusal::openai)
}

async fn openai(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let started = Instant::now();
    let request = decode_openai(&read(body)?)?;
    let served = embedding_model(state, request.model.as_deref())?;
    let _request = served.metrics.request();
    let name = served.model.metadata().name.clone();
    let model = embedder(&served)?;
    if let Some(wanted) = request.dimensions
        && wanted != model.dimensions()
    {
        return Err(Refusal::bad(
            "dimensions",
            format!(
                "this model's embeddings have {} dimensions and cannot be shortened",
                model.dimensions()
            ),
        ));
    }
    let texts = request.texts;
    let counts = count_tokens(model, &texts, "input", false)?;
    let tokens: usize = counts.iter().sum();
    let metrics = &served.metrics;
    metrics.preprocess.observe_duration(started.elapsed());
    let vectors = embed(&served, texts, counts, true).await?;
    let started = Instant::now();
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if request.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let response = Json(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response();
    metrics.postprocess.observe_duration(started.elapsed());
    Ok(response)
}

/// text-embeddings-inference's `/embed` request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiEmbedBody {
    inputs: Texts,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: bool,
    truncation_direction: Option<String>,
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// text-embeddings-inference's `/embed` request, checked.
#[derive(Debug)]
pub struct TeiEmbedRequest {
    /// The texts, none empty, at most [`MAX_INPUTS`].
    pub texts: Vec<String>,
    /// Vectors of unit length (the default).
    pub normalize: bool,
    /// Cut a text over the token limit instead of refusing it.
    pub truncate: bool,
}

/// Decodes and checks TEI's `/embed` body; errors name the field.
pub fn decode_tei_embed(body: &[u8]) -> Result<TeiEmbedRequest, Refusal> {
    let body: TeiEmbedBody = parse(body)?;
    match body.truncation_direction.as_deref() {
        None | Some("Right" | "right") => {}
        Some(other) => {
            return Err(Refusal::bad(
                "truncation_direction",
                format!("only \"Right\" is supported, got {other:?}"),
            ));
        }
    }
    if let Some(name) = body.prompt_name {
        return Err(Refusal::bad(
            "prompt_name",
            format!("this server has no prompts (asked for {name:?})"),
        ));
    }
    Ok(TeiEmbedRequest {
        texts: body.inputs.into_vec("inputs")?,
        normalize: body.normalize,
        truncate: body.truncate,
    })
}

/// `POST /embed` (and `POST /`): `[[f32]]`, one row per input.
pub async fn tei_embed(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    tei(&state, body).await.unwrap_or_else(Refusal::tei)
}

async fn tei(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, Refusal> {
    let started = Instant::now();
    let request = decode_tei_embed(&read(body)?)?;
    let served = embedding_model(state, None)?;
    let _request = served.metrics.request();
    let tokens = count_tokens(
        embedder(&served)?,
        &request.texts,
        "inputs",
        request.truncate,
    )?;
    let metrics = &served.metrics;
    metrics.preprocess.observe_duration(started.elapsed());
    let vectors = embed(&served, request.texts, tokens, request.normalize).await?;
    let started = Instant::now();
    let response = Json(vectors).into_response();
    metrics.postprocess.observe_duration(started.elapsed());
    Ok(response)
}

/// text-embeddings-inference's `/tokenize` request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiTokenizeBody {
    inputs: Texts,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

/// text-embeddings-inference's `/tokenize` request, checked.
#[derive(Debug)]
pub struct TeiTokenizeRequest {
    /// The texts, none empty, at most [`MAX_INPUTS`].
    pub texts: Vec<String>,
    /// List `[CLS]` and `[SEP]` too (the default).
    pub add_special_tokens: bool,
}

/// Decodes and checks TEI's `/tokenize` body; errors name the field.
pub fn decode_tei_tokenize(body: &[u8]) -> Result<TeiTokenizeRequest, Refusal> {
    let body: TeiTokenizeBody = parse(body)?;
    Ok(TeiTokenizeRequest {
        texts: body.inputs.into_vec("inputs")?,
        add_special_tokens: body.add_special_tokens,
    })
}

/// `POST /tokenize`: each input's tokens as `{id, text, special, start, stop}`.
pub async fn tei_tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    tokenize(&state, body).unwrap_or_else(Refusal::tei)
}

fn tokenize(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, Refusal> {
    let request = decode_tei_tokenize(&read(body)?)?;
    let served = embedding_model(state, None)?;
    let refs: Vec<&str> = request.texts.iter().map(String::as_str).collect();
    let tokens = embedder(&served)?
        .tokenize(&refs, request.add_special_tokens)
        .map_err(Refusal::from_infer)?;
    let render = |t: &Token| {
        json!({
            "id": t.id,
            "text": t.text,
            "special": t.special,
            "start": t.offsets.map(|o| o.0),
            "stop": t.offsets.map(|o| o.1),
        })
    };
    let body: Vec<Vec<Value>> = tokens
        .iter()
        .map(|text| text.iter().map(render).collect())
        .collect();
    Ok(Json(body).into_response())
}
