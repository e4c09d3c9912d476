//! Trains the `sluice-mlp` Iris classifier shipped in `samples/iris/model`.
//!
//! `cargo run --release -p sluice-model-server --example train_iris -- [CSV] [OUT_DIR] [HIDDEN]`
//!
//! Reads the Iris data (150 rows: 4 measurements in cm, class 0 = setosa, 1 = versicolor,
//! 2 = virginica; the copy in `samples/iris/data` is the one scikit-learn ships), holds out
//! 30 rows, trains an MLP with AdamW on standardized features (hidden layer widths from
//! `HIDDEN`, comma-separated, default `16`: a 4-16-3 network), refuses to write a model
//! that scores under 90 % on the held-out rows, and writes `config.json` and
//! `model.safetensors`. `samples/iris/model-v2` (the canary sample's second version) is
//! `-- samples/iris/data/iris.csv samples/iris/model-v2 4`.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use sluice_model_server::mlp::{CONFIG_FILE, MlpConfig, MlpNet, WEIGHTS_FILE};

const EPOCHS: usize = 400;
const HELD_OUT: usize = 30;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris");
    let csv = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("data/iris.csv"));
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("model"));
    let hidden = match args.next() {
        Some(widths) => widths
            .split(',')
            .map(|w| {
                w.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|w| *w > 0)
                    .with_context(|| format!("HIDDEN {widths:?}: {w:?} is not a width > 0"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![16],
    };

    let (mut rows, classes) = read_csv(&csv)?;
    shuffle(&mut rows, 20261126);
    let (test, train) = rows.split_at(HELD_OUT);

    let features = 4;
    let mut mean = vec![0f32; features];
    let mut std = vec![0f32; features];
    for (x, _) in train {
        for j in 0..features {
            mean[j] += x[j] / train.len() as f32;
        }
    }
    for (x, _) in train {
        for j in 0..features {
            std[j] += (x[j] - mean[j]).powi(2) / train.len() as f32;
        }
    }
    std.iter_mut().for_each(|s| *s = s.sqrt().max(1e-6));

    let config = MlpConfig {
        input_name: "input-0".into(),
        features,
        hidden,
        classes,
        mean,
        std,
        max_batch_size: 4096,
    };
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let net = MlpNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let (x_train, y_train) = tensors(train, &device)?;
    let (x_test, y_test) = tensors(test, &device)?;
    let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 0.01)?;
    for epoch in 0..EPOCHS {
        let loss = candle_nn::loss::cross_entropy(&net.logits(&x_train)?, &y_train)?;
        opt.backward_step(&loss)?;
        if epoch % 100 == 0 {
            println!("epoch {epoch:4}: loss {:.4}", loss.to_scalar::<f32>()?);
        }
    }
    let train_acc = accuracy(&net, &x_train, &y_train)?;
    let test_acc = accuracy(&net, &x_test, &y_test)?;
    println!("train accuracy {train_acc:.3}, held-out accuracy {test_acc:.3}");
    ensure!(
        test_acc >= 0.9,
        "held-out accuracy {test_acc:.3} is under 0.9; not writing"
    );

    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join(CONFIG_FILE),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    varmap.save(out.join(WEIGHTS_FILE))?;
    println!("wrote {}", out.display());
    Ok(())
}

type Row = ([f32; 4], u32);

fn read_csv(path: &PathBuf) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    // scikit-learn's header: "150,4,setosa,versicolor,virginica".
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let classes: Vec<String> = header.iter().skip(2).map(|s| s.trim().to_owned()).collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != 5 {
            bail!("line {}: expected 5 cells, got {}", i + 2, cells.len());
        }
        let mut x = [0f32; 4];
        for (j, cell) in cells[..4].iter().enumerate() {
            x[j] = cell
                .trim()
                .parse()
                .with_context(|| format!("line {}", i + 2))?;
        }
        let y: u32 = cells[4]
            .trim()
            .parse()
            .with_context(|| format!("line {}", i + 2))?;
        ensure!(
            (y as usize) < classes.len(),
            "line {}: class {y} out of range",
            i + 2
        );
        rows.push((x, y));
    }
    Ok((rows, classes))
}

/// Fisher-Yates with a fixed 64-bit LCG, so the split is the same on every run.
fn shuffle(rows: &mut [Row], mut seed: u64) {
    for i in (1..rows.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        rows.swap(i, j);
    }
}

fn tensors(rows: &[Row], device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let xs: Vec<f32> = rows.iter().flat_map(|(x, _)| *x).collect();
    let ys: Vec<u32> = rows.iter().map(|(_, y)| *y).collect();
    Ok((
        Tensor::from_vec(xs, (rows.len(), 4), device)?,
        Tensor::new(ys, device)?,
    ))
}

fn accuracy(net: &MlpNet, x: &Tensor, y: &Tensor) -> anyhow::Result<f32> {
    let predicted = net.logits(x)?.argmax(D::Minus1)?;
    let correct = predicted
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(correct / y.dims1()? as f32)
}
