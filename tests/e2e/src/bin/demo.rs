//! The README's main command: a short story through a real `strongroom dev` (SoftHSM2
//! token, redb state, HTTP) with the project's own client. Alice creates a room key and a
//! resource for Bob, encrypts a message, Bob reads it, Eve (an outsider) is refused, Bob is
//! removed and can no longer fetch the room's keys, and Alice rotates to a new key.

use anyhow::Context as _;
use serde_json::{Value, json};
use strongroom_e2e::{DevServer, Session};
use strongroom_kms::crypto::SecretKey32;
use strongroom_kms::jose::{b64d, jwe};
use uuid::Uuid;

fn key_of(v: &Value) -> anyhow::Result<SecretKey32> {
    let k = v["jwk"]["k"].as_str().context("no jwk.k")?;
    SecretKey32::from_slice(&b64d("k", k)?).context("key is not 256 bits")
}

fn say(who: &str, what: impl std::fmt::Display) {
    println!("  {who:<7} {what}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    println!("strongroom demo: starting `strongroom dev` (SoftHSM2 token, redb state) ...");
    let state = tempfile::tempdir()?;
    let server = DevServer::start(Some(state.path()), &[])?;
    let info = server.info.clone();
    println!("  KMS     {} at {}", info.kms_cluster, info.kms_url);
    println!(
        "  static  key {} (RSA in SoftHSM2, x5c self-signed)",
        info.static_jwk.kid
    );
    let http = strongroom_e2e::http_client();
    let (alice_id, bob_id, eve_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let alice = Session::connect(&http, &info, alice_id, "alice-laptop").await?;
    let bob = Session::connect(&http, &info, bob_id, "bob-phone").await?;
    let eve = Session::connect(&http, &info, eve_id, "eve-desktop").await?;
    println!(
        "\n1. Each device ran the ECDHE handshake (RSA-OAEP to the HSM key, PS256-signed answer):"
    );
    for s in [&alice, &bob, &eve] {
        say(
            "",
            format!(
                "user {} channel {}",
                s.user,
                s.kms.channel_uri().unwrap_or("-")
            ),
        );
    }

    println!("\n2. Alice creates a key and a resource (the room) authorizing Bob:");
    let keys = alice.call("create", "/keys", json!({"count": 1})).await?;
    let key1 = &keys["keys"][0];
    let key1_uri = key1["uri"].as_str().context("key uri")?.to_owned();
    say("alice", format!("created {key1_uri} -> {}", keys["status"]));
    let res = alice
        .call(
            "create",
            "/resources",
            json!({"userIds": [bob_id.to_string()], "keyUris": [key1_uri]}),
        )
        .await?;
    let res_uri = res["resource"]["uri"]
        .as_str()
        .context("resource uri")?
        .to_owned();
    say("alice", format!("created {res_uri} -> {}", res["status"]));

    let text = "Quarterly numbers are in the vault, not in the cloud.";
    let msg = jwe::encrypt_dir(&key_of(key1)?, &key1_uri, text.as_bytes());
    say(
        "alice",
        format!("sends ciphertext {}...", &msg[..60.min(msg.len())]),
    );

    println!("\n3. Bob fetches the key from the KMS and decrypts; Eve is refused:");
    let got = bob.call("retrieve", &key1_uri, json!({})).await?;
    let plain = jwe::Jwe::parse(&msg)?.decrypt_dir(&key_of(&got["key"])?)?;
    say(
        "bob",
        format!(
            "retrieve -> {}; reads: {:?}",
            got["status"],
            String::from_utf8_lossy(&plain)
        ),
    );
    let denied = eve.call("retrieve", &key1_uri, json!({})).await?;
    say(
        "eve",
        format!(
            "retrieve -> {} ({})",
            denied["status"],
            denied["reason"].as_str().unwrap_or("")
        ),
    );

    println!("\n4. Alice removes Bob; Bob's next retrieve is refused:");
    let q = format!("{res_uri}/authorizations?authId={bob_id}");
    let removed = alice.call("delete", &q, json!({})).await?;
    say("alice", format!("remove bob -> {}", removed["status"]));
    let after = bob.call("retrieve", &key1_uri, json!({})).await?;
    say(
        "bob",
        format!(
            "retrieve -> {} ({})",
            after["status"],
            after["reason"].as_str().unwrap_or("")
        ),
    );

    println!("\n5. Alice rotates to a new key bound to the room:");
    let keys2 = alice.call("create", "/keys", json!({"count": 1})).await?;
    let key2_uri = keys2["keys"][0]["uri"]
        .as_str()
        .context("key uri")?
        .to_owned();
    let bound = alice
        .call("update", &key2_uri, json!({"resourceUri": res_uri}))
        .await?;
    say(
        "alice",
        format!(
            "bind {key2_uri} -> {} at {}",
            bound["status"], bound["key"]["bindDate"]
        ),
    );
    let listed = alice
        .call("retrieve", &format!("{res_uri}/keys"), json!({}))
        .await?;
    say(
        "alice",
        format!(
            "room now has {} keys",
            listed["keys"].as_array().map_or(0, Vec::len)
        ),
    );
    let bob2 = bob.call("retrieve", &key2_uri, json!({})).await?;
    say("bob", format!("retrieve new key -> {}", bob2["status"]));

    let ok = got["status"] == 200
        && denied["status"] == 403
        && after["status"] == 403
        && bob2["status"] == 403;
    server.stop()?;

    println!(
        "\n6. The security team checks the audit log (every decision, HSM-signed checkpoints):"
    );
    let bin = strongroom_e2e::strongroom_bin()?;
    let state_arg = state.path().to_string_lossy().into_owned();
    for args in [
        vec!["audit", "verify", "--state", state_arg.as_str()],
        vec![
            "audit",
            "show",
            "--state",
            state_arg.as_str(),
            "--outcome",
            "denied",
        ],
    ] {
        let out = std::process::Command::new(&bin).args(&args).output()?;
        println!(
            "  $ strongroom {}",
            args.join(" ").replace(state_arg.as_str(), "<state>")
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }
        if !out.status.success() {
            anyhow::bail!(
                "strongroom {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if ok {
        println!("\ndemo finished: every decision was as expected.");
        Ok(())
    } else {
        anyhow::bail!("a decision differed from what the demo expects")
    }
}
