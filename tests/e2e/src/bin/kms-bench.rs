//! KMS benchmark (not a test): a load generator on the same machine, over loopback HTTP
//! keep-alive, against a real `strongroom dev` (SoftHSM2, redb). Build both in release:
//! `cargo build --release -p strongroom -p strongroom-e2e && target/release/kms-bench`.
//!
//! Reports: retrieves/s and p50/p99 through the full JWE channel at full load and at half
//! that rate; ECDHE handshakes/s (static key in SoftHSM2); durable key creations/s; RSS of
//! the server with N stored keys; and the in-process cost of the cryptography alone per
//! retrieve, so the overhead ratio is known.
//!
//! `--retrieve-only` runs the full-load retrieve phase alone; `--dev-arg X` (repeatable)
//! passes X to `strongroom dev`, e.g. `--dev-arg --audit-checkpoint-every --dev-arg 100000`,
//! so that two settings can be alternated run by run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use strongroom_e2e::{DevInfo, DevServer, Session, post_messages};
use uuid::Uuid;

struct Args {
    seconds: u64,
    concurrency: usize,
    keys: u64,
    rsa_bits: String,
    /// Extra `strongroom dev` arguments (`--dev-arg`, repeatable), e.g. audit tuning.
    extra_dev: Vec<String>,
    /// Only the full-load retrieve phase (`--retrieve-only`), for A/B runs.
    retrieve_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        concurrency: 32,
        keys: 1_000_000,
        rsa_bits: "3072".into(),
        extra_dev: Vec::new(),
        retrieve_only: false,
    };
    let mut v: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = v.iter().position(|x| x == "--retrieve-only") {
        a.retrieve_only = true;
        v.remove(at);
    }
    let mut i = 0;
    while i + 1 < v.len() {
        match v[i].as_str() {
            "--dev-arg" => a.extra_dev.push(v[i + 1].clone()),
            "--seconds" => a.seconds = v[i + 1].parse().unwrap_or(a.seconds),
            "--concurrency" => a.concurrency = v[i + 1].parse().unwrap_or(a.concurrency),
            "--keys" => a.keys = v[i + 1].parse().unwrap_or(a.keys),
            "--rsa-bits" => a.rsa_bits.clone_from(&v[i + 1]),
            _ => {}
        }
        i += 2;
    }
    a
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    #[allow(clippy::cast_precision_loss)]
    let ns = sorted[idx.min(sorted.len() - 1)] as f64;
    ns / 1e6
}

/// Runs `concurrency` sessions retrieving `key_uri` for `secs`; optional total rate limit.
async fn retrieve_load(
    sessions: &[Arc<Session>],
    key_uri: &str,
    secs: u64,
    rate: Option<f64>,
) -> anyhow::Result<(f64, Vec<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    #[allow(clippy::cast_precision_loss)]
    let per_task = rate.map(|r| r / sessions.len() as f64);
    for s in sessions {
        let (s, stop, done, uri) = (
            Arc::clone(s),
            Arc::clone(&stop),
            Arc::clone(&done),
            key_uri.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = per_task {
                    #[allow(clippy::cast_precision_loss)]
                    let due = start + Duration::from_secs_f64(n as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                let r = s.call("retrieve", &uri, json!({})).await?;
                anyhow::ensure!(r["status"] == 200, "retrieve failed: {r}");
                lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    #[allow(clippy::cast_precision_loss)]
    let rps = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((rps, all))
}

/// The audit log's (records, flushes) counters from `/healthz`.
async fn audit_counters(http: &reqwest::Client, info: &DevInfo) -> anyhow::Result<(u64, u64)> {
    let h: serde_json::Value = http
        .get(format!("{}/healthz", info.kms_url))
        .send()
        .await?
        .json()
        .await?;
    let field = |k: &str| {
        h[k].as_u64()
            .with_context(|| format!("/healthz lacks {k}: {h}"))
    };
    Ok((field("audit_records")?, field("audit_flushes")?))
}

/// utime + stime of a process, in seconds (from /proc/PID/stat, clock ticks of 100 Hz).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let secs = ticks as f64 / 100.0;
    secs
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The cryptography of one retrieve, in process: the client encrypts the request, the
/// server decrypts it, unseals the key, encrypts the answer, the client decrypts it.
fn crypto_only_us() -> f64 {
    use strongroom_kms::crypto::SecretKey32;
    use strongroom_kms::jose::jwe;
    use strongroom_kms::kek::Kek;
    let channel = SecretKey32::generate();
    let kek = Kek::from_key(SecretKey32::generate());
    let uri = "kms://kms.strongroom.test/keys/00000000-0000-0000-0000-000000000000";
    let sealed = kek.seal(uri, &SecretKey32::generate());
    let req = br#"{"uri":"kms://kms.strongroom.test/keys/00000000-0000-0000-0000-000000000000","method":"retrieve","requestId":"6f1c2a2e-0000-4000-8000-000000000000","client":{"clientId":"bench","credential":{"userId":"6f1c2a2e-0000-4000-8000-000000000001","bearer":"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig-sig-sig-sig-sig-sig-sig-sig-sig-sig-sig-sig-sig-sig-sig"}}}"#;
    let resp = vec![b'x'; 420];
    let n = 100_000u32;
    let t = Instant::now();
    for _ in 0..n {
        let m = jwe::encrypt_dir(&channel, "kms://k/ecdhe/1", req);
        let p = jwe::Jwe::parse(&m).and_then(|j| j.decrypt_dir(&channel));
        let k = kek.unseal(uri, &sealed);
        let a = jwe::encrypt_dir(&channel, "kms://k/ecdhe/1", &resp);
        let b = jwe::Jwe::parse(&a).and_then(|j| j.decrypt_dir(&channel));
        std::hint::black_box((p.is_ok(), k.is_ok(), b.is_ok()));
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// ECDHE handshakes/s: RSA-OAEP decrypt + PS256 sign in SoftHSM2, channel stored durably.
async fn handshakes(
    http: &reqwest::Client,
    info: &DevInfo,
    user: Uuid,
    seconds: u64,
) -> anyhow::Result<()> {
    let hs_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (http, info, hs_total, stop) = (
            http.clone(),
            info.clone(),
            Arc::clone(&hs_total),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            // One token per client, minted once: the benchmark measures handshakes only.
            let bearer = strongroom_e2e::mint_token(&http, &info, user, &format!("hs-{i}")).await?;
            while !stop.load(Ordering::Relaxed) {
                let mut c = strongroom_kms::client::KmsClient::new(
                    info.static_jwk.clone(),
                    &info.kms_cluster,
                    user,
                    &format!("hs-{i}"),
                    secrecy::SecretString::from(bearer.clone()),
                )?;
                let (hs, pending) = c.begin_handshake()?;
                let answer = post_messages(&http, &info, vec![hs]).await?;
                c.finish_handshake(answer.first().context("no answer")?, pending)?;
                hs_total.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds.min(10))).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    let hs = hs_total.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "ECDHE handshakes/s (8 concurrent clients; RSA-OAEP decrypt + PS256 sign in SoftHSM2, channel stored durably): {hs:.0}"
    );

    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let crypto_us = crypto_only_us();
    println!("crypto only, per retrieve (client+server JWE both ways + unseal): {crypto_us:.2} µs");

    let state = tempfile::tempdir()?;
    let mut dev: Vec<&str> = vec!["--rsa-bits", &a.rsa_bits];
    dev.extend(a.extra_dev.iter().map(String::as_str));
    let server = DevServer::start(Some(state.path()), &dev)?;
    println!(
        "static RSA key: {} bits (SoftHSM2); dev arguments {dev:?}",
        a.rsa_bits
    );
    let info = server.info.clone();
    let http = strongroom_e2e::http_client();
    let user = Uuid::new_v4();
    if !a.retrieve_only {
        handshakes(&http, &info, user, a.seconds).await?;
    }

    // Sessions for the retrieve load.
    let mut sessions = Vec::new();
    for i in 0..a.concurrency {
        sessions.push(Arc::new(
            Session::connect(&http, &info, user, &format!("c-{i}")).await?,
        ));
    }
    let created = sessions[0]
        .call("create", "/keys", json!({"count": 1}))
        .await?;
    let key_uri = created["keys"][0]["uri"]
        .as_str()
        .context("key uri")?
        .to_owned();
    let res = sessions[0]
        .call("create", "/resources", json!({"keyUris": [key_uri]}))
        .await?;
    anyhow::ensure!(res["status"] == 201, "resource: {res}");

    println!("full-load phase: starting");
    let audit0 = audit_counters(&http, &info).await?;
    let cpu0 = cpu_seconds(server.pid());
    let (rps, lat) = retrieve_load(&sessions, &key_uri, a.seconds, None).await?;
    let cpu1 = cpu_seconds(server.pid());
    let audit1 = audit_counters(&http, &info).await?;
    println!(
        "retrieves/s at full load ({} clients): {rps:.0}  p50 {:.2} ms  p99 {:.2} ms",
        a.concurrency,
        pct(&lat, 0.50),
        pct(&lat, 0.99)
    );
    #[allow(clippy::cast_precision_loss)]
    let per_flush = (audit1.0 - audit0.0) as f64 / (audit1.1 - audit0.1).max(1) as f64;
    println!("audit records per flush at full load: {per_flush:.1}");
    #[allow(clippy::cast_precision_loss)]
    let mean_us = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let server_us = (cpu1 - cpu0) * 1e6 / (rps * a.seconds as f64);
    println!(
        "overhead: server CPU per retrieve {server_us:.1} µs (measured from /proc) vs crypto alone {crypto_us:.1} µs -> ratio {:.1}x; mean client latency {mean_us:.0} µs",
        server_us / crypto_us
    );
    if a.retrieve_only {
        server.stop()?;
        return Ok(());
    }
    let (rps_half, lat_half) =
        retrieve_load(&sessions, &key_uri, a.seconds, Some(rps / 2.0)).await?;
    println!(
        "retrieves/s at half that rate: {rps_half:.0}  p50 {:.2} ms  p99 {:.2} ms",
        pct(&lat_half, 0.50),
        pct(&lat_half, 0.99)
    );

    // Durable key creations/s: count=1 per request, every client concurrently (group commit).
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in &sessions {
        let (s, stop, made) = (Arc::clone(s), Arc::clone(&stop), Arc::clone(&made));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = s.call("create", "/keys", json!({"count": 1})).await?;
                anyhow::ensure!(r["status"] == 201, "create failed: {r}");
                made.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    let kps = made.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "durable key creations/s (count=1 per request, {} clients): {kps:.0}",
        a.concurrency
    );

    // Fill to N keys (count=100 per request) and read the server's RSS.
    let have = made.load(Ordering::Relaxed) + 1;
    let need = a.keys.saturating_sub(have) / 100;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for s in &sessions {
        let (s, next) = (Arc::clone(s), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < need {
                let r = s.call("create", "/keys", json!({"count": 100})).await?;
                anyhow::ensure!(r["status"] == 201, "bulk create failed: {r}");
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    let bulk = (need * 100) as f64 / t0.elapsed().as_secs_f64();
    let (rps_full, _) = retrieve_load(&sessions, &key_uri, 3, None).await?;
    let rss = rss_kib(server.pid());
    let db = std::fs::metadata(info.state_dir.join("kms.redb")).map_or(0, |m| m.len());
    println!(
        "stored keys: {}  (bulk creation {bulk:.0} keys/s)  server RSS {:.1} MiB  kms.redb {:.0} MiB  retrieves/s then {rps_full:.0}",
        have + need * 100,
        f64::from(u32::try_from(rss).unwrap_or(u32::MAX)) / 1024.0,
        f64::from(u32::try_from(db / (1024 * 1024)).unwrap_or(u32::MAX)),
    );
    server.stop()?;
    Ok(())
}
