//! The README's main command: the whole flow through a real `strongroom dev` (SoftHSM2
//! token, redb state) and the simulated hosted core it starts and dials out to (pinned TLS).
//! Three devices use the reference client (`strongroom-client`) against the core only:
//! Alice and Bob talk, Carol (of another organization) joins and is removed. The transcript
//! shows what each client read, what the core holds (ciphertext and key URIs only), and that
//! Carol cannot read what was said after her removal. It ends with the security team
//! verifying the audit log and listing the denied decisions.

use anyhow::{Context as _, bail};
use strongroom_client::{Client, CoreError, Item};
use strongroom_e2e::World;

fn say(who: &str, what: impl std::fmt::Display) {
    println!("  {who:<6} {what}");
}

async fn show_read(who: &str, c: &mut Client, room: uuid::Uuid) -> anyhow::Result<Vec<Item>> {
    let items = c.read(room, None).await?;
    for i in &items {
        say(who, format!("reads {i}"));
    }
    Ok(items)
}

fn short(s: &str, n: usize) -> String {
    if s.len() > n {
        format!("{}...", &s[..n])
    } else {
        s.to_owned()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    println!(
        "strongroom demo: `strongroom dev` (SoftHSM2, redb) + the simulated core, dial-out ..."
    );
    let state = tempfile::tempdir()?;
    let w = World::start(Some(state.path())).await?;
    let info = w.server.info.clone();
    println!(
        "  KMS    {} (its only link: a dial-out WebSocket to the core)",
        info.kms_cluster
    );
    println!(
        "  core   {} (TLS from a pathLen-0 dev CA the appliance pins)",
        w.core_url
    );
    let globex = w.admin.org("Globex", &info.kms_cluster).await?;
    let mut alice = w.user(w.org, "Alice", "alice-laptop").await?;
    let mut bob = w.user(w.org, "Bob", "bob-phone").await?;
    let mut carol = w.user(globex, "Carol", "carol-desktop").await?;

    println!(
        "\n1. Each device logged in at the core and opened an ECDHE channel to its KMS through the core's relay:"
    );
    for (n, c) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        say(
            n,
            format!("user {} channel {}", c.user, c.channel_uri().unwrap_or("-")),
        );
    }

    println!(
        "\n2. Alice creates a room (KMS resource first, then the core room with an encrypted title) and adds Bob:"
    );
    let room = alice.create_room("Q3 launch").await?;
    alice.add_member(room, bob.user).await?;
    say(
        "alice",
        format!("room {room}, title {:?}", alice.room(room).await?.title),
    );
    let mut said = Vec::new();
    for (n, c, t) in [
        (
            "alice",
            &mut alice,
            "The numbers are in the vault, not in the cloud.",
        ),
        ("bob", &mut bob, "Good. Launch on the 14th?"),
    ] {
        c.send(room, t).await?;
        say(
            n,
            format!("says {t:?} (own key {})", c.my_key(room).unwrap_or("-")),
        );
        said.push(t.to_owned());
    }
    show_read("bob", &mut bob, room).await?;

    println!(
        "\n3. Alice adds Carol (another organization): every client shows the room as external:"
    );
    alice.add_member(room, carol.user).await?;
    let r = carol.room(room).await?;
    say(
        "carol",
        format!("sees title {:?}, external = {}", r.title, r.external),
    );
    show_read("carol", &mut carol, room).await?;
    let t = "Happy to help with the launch.";
    carol.send(room, t).await?;
    say("carol", format!("says {t:?}"));
    said.push(t.to_owned());

    println!("\n4. Alice removes Carol; Alice and Bob rotate to fresh keys (R9) and carry on:");
    alice.remove_member(room, carol.user).await?;
    let secret_after = [
        ("alice", "Carol is out. Launch moved to the 21st."),
        ("bob", "Understood, the 21st."),
    ];
    for (n, t) in secret_after {
        let c = if n == "alice" { &mut alice } else { &mut bob };
        c.send(room, t).await?;
        say(
            n,
            format!("says {t:?} (new key {})", c.my_key(room).unwrap_or("-")),
        );
        said.push(t.to_owned());
    }
    let bob_read = show_read("bob", &mut bob, room).await?;
    say(
        "alice",
        format!("room external = {}", alice.room(room).await?.external),
    );

    println!("\n5. Carol after her removal:");
    let refused_room = match carol.read(room, Some(0)).await {
        Err(e) => {
            let c = e.downcast_ref::<CoreError>();
            say("carol", format!("core: {e}"));
            c.is_some_and(|c| c.status == 403)
        }
        Ok(_) => false,
    };
    // Even with a leaked copy of the core's storage, the new keys stay shut.
    let contents = std::fs::read_to_string(
        info.core_state_dir
            .clone()
            .context("no core state")?
            .join("contents.jsonl"),
    )?;
    let stored: Vec<serde_json::Value> = contents
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    carol.forget_keys();
    let mut carol_refused = 0;
    let mut after_removal = 0;
    for s in stored.iter().skip(3) {
        let content = s["content"].as_str().unwrap_or("");
        after_removal += 1;
        match carol.decrypt(content).await {
            Ok(p) => say(
                "carol",
                format!("DECRYPTED {:?}", String::from_utf8_lossy(&p)),
            ),
            Err(e) => {
                carol_refused += 1;
                say(
                    "carol",
                    format!(
                        "leaked #{} kid {}: {e}",
                        s["seq"],
                        s["kid"].as_str().unwrap_or("")
                    ),
                );
            }
        }
    }

    println!("\n6. What the core holds (ciphertext and key URIs only):");
    for s in &stored {
        say(
            "core",
            format!(
                "#{} {} from {} kid {} content {}",
                s["seq"],
                s["kind"].as_str().unwrap_or(""),
                short(s["sender"].as_str().unwrap_or(""), 8),
                s["kid"].as_str().unwrap_or(""),
                short(s["content"].as_str().unwrap_or(""), 40)
            ),
        );
    }
    let core_dir = info.core_state_dir.clone().context("no core state")?;
    let mut leaks = 0;
    for f in ["recording.log", "state.json", "contents.jsonl"] {
        let bytes = std::fs::read(core_dir.join(f))?;
        for p in &said {
            if bytes.windows(p.len()).any(|w| w == p.as_bytes()) {
                leaks += 1;
                say("core", format!("LEAK: {p:?} in {f}"));
            }
        }
    }
    say(
        "core",
        format!(
            "{} plaintexts searched in recording.log (every byte stored or relayed), state.json, contents.jsonl: {leaks} found",
            said.len()
        ),
    );

    let bob_texts: Vec<&str> = bob_read
        .iter()
        .filter_map(|i| match i {
            Item::Message { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let ok = refused_room
        && after_removal == 2
        && carol_refused == after_removal
        && leaks == 0
        && secret_after.iter().all(|(_, t)| bob_texts.contains(t));
    let World { server, .. } = w;
    server.stop()?;

    println!(
        "\n7. The security team checks the audit log (every decision, HSM-signed checkpoints):"
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
            bail!(
                "strongroom {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if ok {
        println!(
            "\ndemo finished: the core stored only ciphertext, Carol cannot read what followed her removal."
        );
        Ok(())
    } else {
        bail!("a decision differed from what the demo expects")
    }
}
