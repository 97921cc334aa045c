//! `kill -9` during heavy appends loses no acknowledged record. The test re-runs its
//! own binary as the writer (an ignored test that only acts when `AUDIT_CRASH_DIR` is
//! set); the writer prints `ACK <seq> <request>` after each append returns.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use strongroom_audit::{Filter, VerifyOptions, query, verify_dir};
use uuid::Uuid;

use crate::common::{config, event, key, open};

const ENV: &str = "AUDIT_CRASH_DIR";

#[test]
#[ignore = "child process of kill9_loses_no_acknowledged_record"]
fn child_writer() {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let mut c = config(std::path::Path::new(&dir));
    c.checkpoint_every = 200;
    c.segment_max_bytes = 128 << 10;
    // The group-commit window on, as in production: it must not let an
    // acknowledgement run ahead of its flush.
    c.group_window = std::time::Duration::from_millis(1);
    c.group_target = 8;
    let log = Arc::new(open(c));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (log, out) = (Arc::clone(&log), Arc::clone(&out));
            std::thread::spawn(move || {
                for i in 0.. {
                    let mut e = event(i);
                    e.request = Some(Uuid::new_v4());
                    let req = e.request;
                    let r = log.append(&e).expect("append");
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {} {} {t}", r.seq, req.unwrap()).unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn kill9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<u64, Uuid> = HashMap::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash::child_writer", "--exact", "--ignored", "--nocapture"])
            .env(ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut this_round = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split(' ');
            if parts.next() != Some("ACK") {
                continue;
            }
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let req: Uuid = parts.next().unwrap().parse().unwrap();
            assert!(
                acked.insert(seq, req).is_none(),
                "seq {seq} acknowledged twice"
            );
            this_round += 1;
            if this_round == 2000 + round * 700 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert!(this_round >= 2000, "round {round}: only {this_round} acks");

        // Reopen (recovery cuts a torn line, signs the recovered tail), then verify.
        open(config(dir.path())).close().unwrap();
        let mut on_disk = HashMap::new();
        let v = query(
            dir.path(),
            &key(),
            &VerifyOptions::default().strict(),
            &Filter::default(),
            &mut |r, _| {
                on_disk.insert(r.seq, r.request.unwrap());
            },
        )
        .unwrap();
        for (seq, req) in &acked {
            assert_eq!(
                on_disk.get(seq),
                Some(req),
                "round {round}: acknowledged seq {seq}"
            );
        }
        assert_eq!(v.records as usize, on_disk.len());
        assert!(
            v.segments > round as usize,
            "rotation happened during the crashes"
        );
    }
    verify_dir(dir.path(), &key(), &VerifyOptions::default().strict()).unwrap();
}
