//! The shipped Iris model (samples/iris/model) classifies known flowers correctly.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use sluice_model_server::Model;
use sluice_model_server::codec::decode_request;
use sluice_model_server::mlp::Mlp;
use sluice_model_server::tensor::TensorData;

#[test]
fn shipped_iris_model_knows_its_flowers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    let model = Mlp::load("iris", &dir).expect("the sample model loads");
    // Rows 1, 51 and 101 of the data set, and the two rows KServe's iris example sends.
    let body = r#"{"inputs": [{"name": "input-0", "shape": [5, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5],
                 [6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}"#;
    let request = decode_request(body.as_bytes(), None).unwrap();
    let outputs = model.infer(&request.inputs).unwrap();
    assert_eq!(outputs[0].name, "output-0");
    assert_eq!(outputs[0].data, TensorData::Int64(vec![0, 1, 2, 1, 1]));
    let TensorData::Fp32(p) = &outputs[1].data else {
        panic!("probabilities are FP32")
    };
    assert_eq!(p.len(), 15);
    for row in p.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn missing_weights_are_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("sluice-iris-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let err = Mlp::load("iris", &dir).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let err = Mlp::load("iris", &dir).unwrap_err().to_string();
    assert!(err.starts_with("invalid weights"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
