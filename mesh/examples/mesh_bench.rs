//! Mesh benchmark, run by `bench/mesh/run.sh`: on loopback, in one process,
//!
//! 1. full handshakes per core-second on the server side: Sluice mTLS (SPIFFE SVIDs verified
//!    both ways) next to a plain TCP accept and a one-way rustls TLS 1.3 handshake (webpki
//!    verifier, no client certificate) as baselines;
//! 2. request round trips over one kept-alive connection at a paced rate, plaintext vs mTLS:
//!    p50/p90/p99 and the difference (the latency mTLS adds to one hop);
//! 3. CPU (both ends together) per 10,000 requests for the same runs.
//!
//! Usage: `mesh_bench [handshakes] [requests] [rate_per_s] [payload_bytes]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::tls::{ExpectedServer, MeshAcceptor, MeshConnector, MeshTls, PeerAuthMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    OneWayTls,
    MeshMtls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain TCP (baseline)",
            Self::OneWayTls => "rustls TLS 1.3, server auth only (baseline)",
            Self::MeshMtls => "Sluice mesh mTLS (SPIFFE, both ways)",
        }
    }
}

struct Setup {
    mesh_server: MeshTls,
    mesh_client: MeshTls,
    one_way_server: Arc<rustls::ServerConfig>,
    one_way_client: Arc<rustls::ClientConfig>,
}

fn setup(dir: &std::path::Path) -> Result<Setup> {
    let ca = Arc::new(CertificateAuthority::load_or_create(&CaConfig::new(
        "cluster.local",
        dir.join("ca"),
    ))?);
    let bundle = Arc::new(ca.trust_bundle()?);
    let svid = |sa: &str| -> Result<RotatingSvid> {
        let id = SpiffeId::new("cluster.local", "default", sa)?;
        Ok(RotatingSvid::fixed(
            ca.issue(&id, Duration::from_secs(3600))?,
        ))
    };
    let mesh_server = MeshTls::new(bundle.clone(), svid("server")?);
    let mesh_client = MeshTls::new(bundle, svid("client")?);

    // Baseline: an ordinary web-PKI style chain (P-256 CA → leaf for "localhost").
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
        .signed_by(&leaf_key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let one_way_server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let mut one_way_client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    one_way_client.resumption = rustls::client::Resumption::disabled();
    Ok(Setup {
        mesh_server,
        mesh_client,
        one_way_server: Arc::new(one_way_server),
        one_way_client: Arc::new(one_way_client),
    })
}

/// CPU time of the calling thread, from the scheduler's own accounting.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// CPU time (user + system) of the whole process.
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        });
    // Linux reports these in USER_HZ, 100 per second on every mainstream build.
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

type Boxed = Box<dyn IoStream>;
trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// Accepts connections in `mode` and echoes fixed-size messages; runs on its own thread with
/// a single-threaded runtime so its CPU time is one core's. Returns the address and a
/// channel reporting the thread CPU time spent per `batch` connections.
fn spawn_server(
    setup: &Setup,
    mode: Mode,
    payload: usize,
) -> Result<(
    SocketAddr,
    std::sync::mpsc::Receiver<Duration>,
    std::thread::JoinHandle<()>,
)> {
    let mesh = MeshAcceptor::new(setup.mesh_server.server_config()?);
    let one_way = tokio_rustls::TlsAcceptor::from(setup.one_way_server.clone());
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                return;
            };
            let start = thread_cpu();
            let mut served = 0u32;
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let stream: Boxed = match mode {
                    Mode::Plain => Box::new(tcp),
                    Mode::OneWayTls => match one_way.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => continue,
                    },
                    Mode::MeshMtls => match mesh.accept(tcp, PeerAuthMode::Strict).await {
                        Ok((s, _)) => Box::new(s),
                        Err(_) => continue,
                    },
                };
                // Serve on this thread too, so all server work is counted on one core.
                tokio::spawn(echo(stream, payload));
                served += 1;
                if served.is_multiple_of(64) {
                    let _ = cpu_tx.send(thread_cpu() - start);
                }
            }
        });
    });
    Ok((addr, cpu_rx, handle))
}

async fn echo(mut stream: Boxed, payload: usize) {
    let mut buf = vec![0u8; payload];
    while stream.read_exact(&mut buf).await.is_ok() {
        if stream.write_all(&buf).await.is_err() || stream.flush().await.is_err() {
            break;
        }
    }
}

async fn connect(setup: &Setup, mode: Mode, addr: SocketAddr) -> Result<Boxed> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match mode {
        Mode::Plain => Box::new(tcp),
        Mode::OneWayTls => {
            let connector = tokio_rustls::TlsConnector::from(setup.one_way_client.clone());
            Box::new(
                connector
                    .connect(ServerName::try_from("localhost")?, tcp)
                    .await?,
            )
        }
        Mode::MeshMtls => {
            let mut config = (*setup
                .mesh_client
                .client_config(ExpectedServer::AnyInTrustDomain)?)
            .clone();
            config.resumption = rustls::client::Resumption::disabled();
            let connector = MeshConnector::new(Arc::new(config));
            Box::new(connector.connect(tcp).await?.0)
        }
    })
}

async fn handshakes(setup: &Setup, mode: Mode, count: u32) -> Result<(f64, Duration)> {
    let (addr, cpu, server) = spawn_server(setup, mode, 1)?;
    let start = Instant::now();
    let mut last_cpu = Duration::ZERO;
    let mut counted = 0u32;
    for i in 0..count {
        let mut stream = connect(setup, mode, addr).await?;
        // One byte each way: the server's handshake is complete when it answers.
        stream.write_all(b"x").await?;
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await?;
        if (i + 1).is_multiple_of(64) {
            last_cpu = cpu.recv().context("server thread stopped")?;
            counted = i + 1;
        }
    }
    let wall = start.elapsed();
    drop(server);
    let per_core = f64::from(counted) / last_cpu.as_secs_f64();
    Ok((per_core, wall))
}

struct Latency {
    p50: Duration,
    p99: Duration,
    cpu_per_10k: Duration,
}

async fn latency(
    setup: &Setup,
    mode: Mode,
    requests: usize,
    rate: u64,
    payload: usize,
) -> Result<Latency> {
    let (addr, _cpu, _server) = spawn_server(setup, mode, payload)?;
    let mut stream = connect(setup, mode, addr).await?;
    let msg = vec![7u8; payload];
    let mut buf = vec![0u8; payload];
    // Warm up the connection and the code paths.
    for _ in 0..200 {
        stream.write_all(&msg).await?;
        stream.read_exact(&mut buf).await?;
    }
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::with_capacity(requests);
    let cpu_start = process_cpu();
    for _ in 0..requests {
        tick.tick().await;
        let sent = Instant::now();
        stream.write_all(&msg).await?;
        stream.read_exact(&mut buf).await?;
        samples.push(sent.elapsed());
    }
    let cpu = process_cpu().saturating_sub(cpu_start);
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    Ok(Latency {
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_10k: cpu.mul_f64(10_000.0 / requests as f64),
    })
}

/// Round trips on a plaintext and an mTLS connection taken in turns at each tick (order
/// alternating), so machine noise hits both paths alike; returns their sorted samples.
async fn interleaved(
    setup: &Setup,
    requests: usize,
    rate: u64,
    payload: usize,
) -> Result<[Vec<Duration>; 2]> {
    let (plain_addr, _c1, _s1) = spawn_server(setup, Mode::Plain, payload)?;
    let (mtls_addr, _c2, _s2) = spawn_server(setup, Mode::MeshMtls, payload)?;
    let mut streams = [
        connect(setup, Mode::Plain, plain_addr).await?,
        connect(setup, Mode::MeshMtls, mtls_addr).await?,
    ];
    let msg = vec![7u8; payload];
    let mut buf = vec![0u8; payload];
    for stream in &mut streams {
        for _ in 0..200 {
            stream.write_all(&msg).await?;
            stream.read_exact(&mut buf).await?;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    for i in 0..requests {
        tick.tick().await;
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let sent = Instant::now();
            streams[which].write_all(&msg).await?;
            streams[which].read_exact(&mut buf).await?;
            samples[which].push(sent.elapsed());
        }
    }
    for s in &mut samples {
        s.sort();
    }
    Ok(samples)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    samples[((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()
        .context("arguments: [handshakes] [requests] [rate_per_s] [payload_bytes]")?;
    let handshake_count = args.first().copied().unwrap_or(2000) as u32;
    let requests = args.get(1).copied().unwrap_or(5000) as usize;
    let rate = args.get(2).copied().unwrap_or(1000).max(1);
    let payload = args.get(3).copied().unwrap_or(1024).max(1) as usize;

    let dir = std::env::temp_dir().join(format!("sluice-mesh-bench-{}", std::process::id()));
    let setup = setup(&dir)?;

    println!(
        "## handshakes ({handshake_count} sequential connections per row, server on one thread)\n"
    );
    println!("| server | handshakes per server core-second | wall s |");
    println!("|---|---|---|");
    for mode in [Mode::Plain, Mode::OneWayTls, Mode::MeshMtls] {
        let (per_core, wall) = handshakes(&setup, mode, handshake_count).await?;
        println!(
            "| {} | {per_core:.0} | {:.2} |",
            mode.name(),
            wall.as_secs_f64()
        );
    }

    println!(
        "\n## request round trips ({requests} requests of {payload} B each way per path, one connection each, paced at {rate}/s)\n"
    );
    println!("Interleaved run (plain and mTLS in turns, same noise):\n");
    println!("| path | p50 µs | p90 µs | p99 µs |");
    println!("|---|---|---|---|");
    let [plain_i, mtls_i] = interleaved(&setup, requests, rate, payload).await?;
    for (mode, s) in [(Mode::Plain, &plain_i), (Mode::MeshMtls, &mtls_i)] {
        println!(
            "| {} | {} | {} | {} |",
            mode.name(),
            us(percentile(s, 0.50)),
            us(percentile(s, 0.90)),
            us(percentile(s, 0.99))
        );
    }
    let diff = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e6;
    println!(
        "\nmTLS adds {:.1} µs at p50 and {:.1} µs at p99 per hop (targets: ≤ 50 µs p50, ≤ 200 µs p99).",
        diff(percentile(&mtls_i, 0.50), percentile(&plain_i, 0.50)),
        diff(percentile(&mtls_i, 0.99), percentile(&plain_i, 0.99))
    );

    println!("\nSeparate runs, for CPU (process user+system, both ends, 10 ms resolution):\n");
    println!("| path | p50 µs | p99 µs | CPU ms per 10k requests |");
    println!("|---|---|---|---|");
    for mode in [Mode::Plain, Mode::MeshMtls] {
        let l = latency(&setup, mode, requests, rate, payload).await?;
        println!(
            "| {} | {} | {} | {:.0} |",
            mode.name(),
            us(l.p50),
            us(l.p99),
            l.cpu_per_10k.as_secs_f64() * 1000.0
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
