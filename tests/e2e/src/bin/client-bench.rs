//! Benchmark of the whole flow (issue 3): `strongroom dev` with core-sim, N concurrent
//! reference clients (default 100) in rooms of two. Measures
//!
//! 1. messages/s **sent**: encrypted by the client, posted to the core, stored (fsync'd) and
//!    answered — N clients at once, each sending `--messages` messages;
//! 2. messages/s **fetched and decrypted**: every client reads its room (each peer's key
//!    fetched once from the KMS through the relay, then cached);
//! 3. KMS requests/s **relayed**: N clients retrieving keys through the core's relay;
//! 4. the cost of one KMS retrieve through the relay against one straight to the KMS (same
//!    channel, same JWE), sequential, as a latency ratio.
//!
//! Build with `cargo build --release -p strongroom -p strongroom-core-sim -p strongroom-e2e`
//! and run `target/release/client-bench [--clients 100] [--messages 20] [--retrieves 200]`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use strongroom_client::Client;
use strongroom_e2e::World;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn per_s(n: usize, d: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / d.as_secs_f64()
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients = arg("--clients", 100).max(2) / 2 * 2;
    let messages = arg("--messages", 20);
    let retrieves = arg("--retrieves", 200);
    let w = World::start(None).await?;
    println!(
        "client-bench: {clients} clients, {messages} messages each, strongroom dev + core-sim on loopback"
    );

    // Setup: users, logins (handshake through the relay), rooms of two.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (http, core, ca, admin, org) = (
            w.http.clone(),
            w.core_url.clone(),
            w.ca_pem.clone(),
            w.admin.clone(),
            w.org,
        );
        set.spawn(async move {
            let email = format!("user{i}@bench.test");
            admin.user(org, &format!("user {i}"), &email).await?;
            let c = Client::login(&http, &core, &ca, &email, &format!("device-{i}")).await?;
            anyhow::Ok((i, c))
        });
    }
    let mut all: Vec<(usize, Client)> = Vec::new();
    while let Some(r) = set.join_next().await {
        all.push(r??);
    }
    all.sort_by_key(|(i, _)| *i);
    let mut all: Vec<Client> = all.into_iter().map(|(_, c)| c).collect();
    let mut rooms = Vec::new();
    for pair in all.chunks_mut(2) {
        let peer = pair[1].user;
        let room = pair[0].create_room("bench room").await?;
        pair[0].add_member(room, peer).await?;
        rooms.push(room);
    }
    println!(
        "  setup (logins, handshakes via relay, {} rooms): {:.1} s",
        rooms.len(),
        t.elapsed().as_secs_f64()
    );

    // 1. Sent (encrypted, posted, stored by the core).
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, mut c) in all.into_iter().enumerate() {
        let room = rooms[i / 2];
        set.spawn(async move {
            for m in 0..messages {
                c.send(room, &format!("message {m} from client {i}"))
                    .await?;
            }
            anyhow::Ok((i, c))
        });
    }
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        back.push(r??);
    }
    let sent_time = t.elapsed();
    let sent = clients * messages;
    back.sort_by_key(|(i, _)| *i);

    // 2. Fetched and decrypted (each reads the whole room: its own and its peer's messages).
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, mut c) in back {
        let room = rooms[i / 2];
        set.spawn(async move {
            let items = c.read(room, Some(0)).await?;
            let n = items
                .iter()
                .filter(|i| matches!(i, strongroom_client::Item::Message { .. }))
                .count();
            anyhow::Ok((i, c, n))
        });
    }
    let mut back = Vec::new();
    let mut decrypted = 0;
    while let Some(r) = set.join_next().await {
        let (i, c, n) = r??;
        decrypted += n;
        back.push((i, c));
    }
    let read_time = t.elapsed();
    anyhow::ensure!(
        decrypted == 2 * sent,
        "read {decrypted} of {} messages",
        2 * sent
    );
    back.sort_by_key(|(i, _)| *i);

    // 3. Relayed KMS requests/s: every client retrieves its own room key repeatedly.
    let per = (retrieves / 10).max(5);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, mut c) in back {
        let room = rooms[i / 2];
        set.spawn(async move {
            let key = c.my_key(room).context("no key")?.to_owned();
            for _ in 0..per {
                let v = c.kms_call("retrieve", &key, json!({})).await?;
                anyhow::ensure!(v["status"] == 200, "retrieve failed: {}", v["status"]);
            }
            anyhow::Ok((i, c))
        });
    }
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        back.push(r??);
    }
    let relay_time = t.elapsed();
    let relayed = clients * per;
    back.sort_by_key(|(i, _)| *i);

    // 4. One retrieve, sequential: through the relay vs straight to the KMS (same JWE form).
    let (_, c) = &back[0];
    let key = c.my_key(rooms[0]).context("no key")?.to_owned();
    let direct_http = strongroom_e2e::http_client();
    let kms_url = format!("{}/kms/messages", w.server.info.kms_url);
    let (mut via_relay, mut direct) = (Vec::new(), Vec::new());
    for round in 0..retrieves + 20 {
        let (jwe, _) = c.kms_request("retrieve", &key, json!({}))?;
        let t = Instant::now();
        let a = c.relay(vec![jwe]).await?;
        let dt = t.elapsed();
        anyhow::ensure!(c.kms_open(&a[0])?["status"] == 200);
        let (jwe, _) = c.kms_request("retrieve", &key, json!({}))?;
        let t = Instant::now();
        let r: Value = direct_http
            .post(&kms_url)
            .json(&json!({"destination": c.kms_cluster(), "kmsMessages": [jwe]}))
            .send()
            .await?
            .json()
            .await?;
        let dd = t.elapsed();
        anyhow::ensure!(
            c.kms_open(r["kmsMessages"][0].as_str().context("no answer")?)?["status"] == 200
        );
        if round >= 20 {
            via_relay.push(dt);
            direct.push(dd);
        }
    }
    let (r50, d50) = (pct(&mut via_relay, 50), pct(&mut direct, 50));
    let (r99, d99) = (pct(&mut via_relay, 99), pct(&mut direct, 99));

    println!("| measure | figure |");
    println!("|---|---|");
    println!(
        "| messages/s sent (encrypt, POST to the core, stored), {clients} clients | {:.0} ({sent} in {:.2} s) |",
        per_s(sent, sent_time),
        sent_time.as_secs_f64()
    );
    println!(
        "| messages/s fetched and decrypted, {clients} clients | {:.0} ({decrypted} in {:.2} s, keys via relay once per sender) |",
        per_s(decrypted, read_time),
        read_time.as_secs_f64()
    );
    println!(
        "| KMS retrieves/s relayed through the core, {clients} clients | {:.0} ({relayed} in {:.2} s) |",
        per_s(relayed, relay_time),
        relay_time.as_secs_f64()
    );
    println!(
        "| one retrieve via relay, p50 / p99 | {:.2} ms / {:.2} ms |",
        r50.as_secs_f64() * 1e3,
        r99.as_secs_f64() * 1e3
    );
    println!(
        "| one retrieve direct to the KMS, p50 / p99 | {:.2} ms / {:.2} ms |",
        d50.as_secs_f64() * 1e3,
        d99.as_secs_f64() * 1e3
    );
    println!(
        "| relay / direct (p50) | {:.2}x |",
        r50.as_secs_f64() / d50.as_secs_f64()
    );
    Ok(())
}
