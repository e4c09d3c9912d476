//! A closed-loop load generator for the model-server benchmark (bench/model-server):
//! `concurrency` workers each send one request, wait for the answer, and send the next,
//! for `duration` seconds after a warm-up; prints one JSON line with requests/s, p50 and
//! p99 latency. The same tool drives every HTTP server in the benchmark (Sluice and KServe's
//! Python server), so the client costs the same for all.
//!
//! ```text
//! loadgen http URL BODY_FILE CONCURRENCY SECONDS
//! loadgen grpc HOST:PORT MODEL TEXT CONCURRENCY SECONDS
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sluice_model_server::grpc::inference::ModelInferRequest;
use sluice_model_server::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_model_server::grpc::inference::model_infer_request::InferInputTensor;
use tokio::time::Instant;

#[derive(Clone)]
enum Target {
    Http {
        url: http::Uri,
        body: Bytes,
    },
    Grpc {
        channel: tonic::transport::Channel,
        model: String,
        text: String,
    },
}

async fn one(
    target: &Target,
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
) -> bool {
    match target {
        Target::Http { url, body } => {
            let req = http::Request::post(url.clone())
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .unwrap();
            match client.request(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    ok && resp.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            }
        }
        Target::Grpc {
            channel,
            model,
            text,
        } => {
            let mut c = GrpcInferenceServiceClient::new(channel.clone());
            let mut raw = Vec::with_capacity(text.len() + 4);
            raw.extend((text.len() as u32).to_le_bytes());
            raw.extend(text.as_bytes());
            let req = ModelInferRequest {
                model_name: model.clone(),
                inputs: vec![InferInputTensor {
                    name: "text".into(),
                    datatype: "BYTES".into(),
                    shape: vec![1],
                    ..Default::default()
                }],
                raw_input_contents: vec![raw],
                ..Default::default()
            };
            c.model_infer(req).await.is_ok()
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (target, concurrency, seconds) = match args.get(1).map(String::as_str) {
        Some("http") if args.len() == 6 => (
            Target::Http {
                url: args[2].parse().expect("URL"),
                body: Bytes::from(std::fs::read(&args[3]).expect("body file")),
            },
            args[4].parse::<usize>().expect("concurrency"),
            args[5].parse::<f64>().expect("seconds"),
        ),
        Some("grpc") if args.len() == 7 => (
            Target::Grpc {
                channel: tonic::transport::Endpoint::from_shared(format!("http://{}", args[2]))
                    .expect("address")
                    .connect()
                    .await
                    .expect("connect"),
                model: args[3].clone(),
                text: args[4].clone(),
            },
            args[5].parse::<usize>().expect("concurrency"),
            args[6].parse::<f64>().expect("seconds"),
        ),
        _ => {
            eprintln!(
                "usage: loadgen http URL BODY_FILE CONCURRENCY SECONDS\n       loadgen grpc HOST:PORT MODEL TEXT CONCURRENCY SECONDS"
            );
            std::process::exit(2);
        }
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http::<Full<Bytes>>();
    let target = Arc::new(target);
    // Warm-up: a second (or a tenth of the run) of load, not measured.
    let warm = Duration::from_secs_f64((seconds / 10.0).clamp(0.5, 2.0));
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (target, client) = (target.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = one(&target, &client).await;
                if t0 >= measure_from {
                    if ok {
                        lat.push(t0.elapsed().as_secs_f64());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)] * 1e3
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(),
            "errors": errors,
            "rps": all.len() as f64 / seconds,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
}
