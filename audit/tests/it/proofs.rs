//! Proofs: known answers (transparency-dev), an independent oracle (ct-merkle),
//! every pair of checkpoints, forgeries, and offline export bundles.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use sha2::Sha256;
use strongroom_audit::tree::{HashStore, leaf_hash};
use strongroom_audit::{
    Bundle, ConsistencyProof, Filter, InclusionProof, LogSnapshot, SoftwareSigner, VerifyOptions,
    export,
};
use uuid::Uuid;

use crate::common::{all_lines, key, write_log};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex32(s: &str) -> [u8; 32] {
    hex(s).try_into().unwrap()
}

#[test]
fn transparency_dev_known_answers() {
    let v: serde_json::Value = serde_json::from_str(include_str!(
        "../../test-vectors/transparency-dev-merkle.json"
    ))
    .unwrap();
    let leaves: Vec<Vec<u8>> = v["leaves_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| hex(l.as_str().unwrap()))
        .collect();
    let mut store = HashStore::new();
    for l in &leaves {
        store.push(leaf_hash(l)).unwrap();
    }
    for (n, root) in v["roots"].as_object().unwrap() {
        assert_eq!(
            store.root(n.parse().unwrap()).unwrap(),
            hex32(root.as_str().unwrap()),
            "root {n}"
        );
    }
    let hashes = |p: &serde_json::Value| -> Vec<[u8; 32]> {
        p.as_array()
            .unwrap()
            .iter()
            .map(|h| hex32(h.as_str().unwrap()))
            .collect()
    };
    for t in v["inclusion"].as_array().unwrap() {
        let (n, i) = (
            t["num_leaves"].as_u64().unwrap(),
            t["idx"].as_u64().unwrap(),
        );
        let proof = store.prove_inclusion(i, n).unwrap();
        assert_eq!(proof, hashes(&t["proof"]), "inclusion {i} in {n}");
        let p = InclusionProof {
            index: i,
            tree_size: n,
            hashes: proof,
        };
        p.verify(&leaves[i as usize], &store.root(n).unwrap())
            .unwrap();
    }
    for t in v["consistency"].as_array().unwrap() {
        let (a, b) = (
            t["num_leaves1"].as_u64().unwrap(),
            t["num_leaves2"].as_u64().unwrap(),
        );
        let proof = if a == b {
            vec![]
        } else {
            store.prove_consistency(a, b).unwrap()
        };
        assert_eq!(proof, hashes(&t["proof"]), "consistency {a}..{b}");
        let p = ConsistencyProof {
            old_size: a,
            new_size: b,
            hashes: proof,
        };
        p.verify(&store.root(a).unwrap(), &store.root(b).unwrap())
            .unwrap();
    }
}

#[test]
fn roots_and_proofs_match_the_ct_merkle_oracle() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 70, |c| c.checkpoint_every = 7);
    let snap = LogSnapshot::load(dir.path(), &key(), &VerifyOptions::default()).unwrap();
    let lines = all_lines(dir.path());
    let mut oracle = MemoryBackedTree::<Sha256, Vec<u8>>::new();
    for (n, line) in lines.iter().enumerate() {
        oracle.push(line.clone());
        let size = n as u64 + 1;
        assert_eq!(
            oracle.root().as_bytes().as_slice(),
            snap.root(size).unwrap(),
            "root {size}"
        );
        for idx in [0, n / 2, n] {
            let ours = snap.prove_inclusion(idx as u64, size).unwrap();
            assert_eq!(
                oracle.prove_inclusion(idx).as_bytes(),
                ours.hashes.concat().as_slice()
            );
        }
        for old in [1, size / 3 + 1, size] {
            let ours = snap.prove_consistency(old, size).unwrap();
            let theirs = oracle.prove_consistency((size - old) as usize);
            assert_eq!(
                theirs.as_bytes(),
                ours.hashes.concat().as_slice(),
                "{old}..{size}"
            );
        }
    }
}

#[test]
fn consistency_between_every_pair_of_checkpoints_verifies_and_forgeries_do_not() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 90, |c| {
        c.checkpoint_every = 9;
        c.segment_max_bytes = 8192;
    });
    let snap = LogSnapshot::load(dir.path(), &key(), &VerifyOptions::default()).unwrap();
    let cps = snap.checkpoints();
    assert!(cps.len() >= 11);
    let mut checked = 0;
    for (i, old) in cps.iter().enumerate() {
        for new in &cps[i..] {
            let p = snap.prove_consistency(old.size(), new.size()).unwrap();
            p.verify_checkpoints(old, new).unwrap();
            checked += 1;
            if old.size() == 0 || old.size() == new.size() {
                continue;
            }
            // Forgeries: each changed hash, a dropped hash, an extra hash, swapped roots,
            // and a proof presented for other sizes.
            for k in 0..p.hashes.len() {
                let mut f = p.clone();
                f.hashes[k][5] ^= 1;
                assert!(f.verify_checkpoints(old, new).is_err());
            }
            let mut f = p.clone();
            f.hashes.pop();
            assert!(f.verify_checkpoints(old, new).is_err());
            let mut f = p.clone();
            f.hashes.push([0; 32]);
            assert!(f.verify_checkpoints(old, new).is_err());
            assert!(p.verify(&new.root(), &old.root()).is_err());
            let mut f = p.clone();
            f.old_size += 1;
            assert!(f.verify(&old.root(), &new.root()).is_err());
        }
    }
    assert!(checked > 60);
}

#[test]
fn forged_inclusion_proofs_fail() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40, |_| {});
    let snap = LogSnapshot::load(dir.path(), &key(), &VerifyOptions::default()).unwrap();
    let root = snap.root(40).unwrap();
    let lines = all_lines(dir.path());
    let p = snap.prove_inclusion(17, 40).unwrap();
    p.verify(&lines[17], &root).unwrap();
    assert!(p.verify(&lines[18], &root).is_err(), "another record");
    let mut f = p.clone();
    f.index = 16;
    assert!(f.verify(&lines[17], &root).is_err(), "another index");
    let mut f = p.clone();
    f.hashes[0][0] ^= 1;
    assert!(f.verify(&lines[17], &root).is_err(), "changed hash");
    let mut f = p.clone();
    f.index = 40;
    assert!(
        f.verify(&lines[17], &root).is_err(),
        "index beyond the tree"
    );
    // Proof sizes: ceil(log2(n)) hashes of 32 bytes.
    assert_eq!(p.hashes.len(), 6);
}

#[test]
fn an_export_bundle_verifies_offline_with_the_public_key_only() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 50, |_| {});
    let mut filter = Filter::default();
    filter.user = Some(Uuid::from_u128(4));
    let bundle = export(dir.path(), &key(), &VerifyOptions::default(), &filter).unwrap();
    let json = bundle.to_json().unwrap();
    drop(dir); // offline: the log is gone

    let auditor_key = strongroom_audit::LogKey::from_vkey(&key().vkey()).unwrap();
    let (cp, records) = Bundle::from_json(&json)
        .unwrap()
        .verify(&auditor_key)
        .unwrap();
    assert_eq!(cp.size(), 50);
    assert_eq!(records.len(), 4); // users cycle 1..=13: seq 3, 16, 29, 42
    assert!(records.iter().all(|r| r.user == Some(Uuid::from_u128(4))));

    let mut t = Bundle::from_json(&json).unwrap();
    t.entries[1].record = t.entries[1].record.replacen("\"allowed\"", "\"denied\"", 1);
    t.entries[1].record = t.entries[1].record.replacen("\"ok\"", "\"forbidden\"", 1);
    assert!(t.verify(&auditor_key).is_err(), "changed record");
    let mut t = Bundle::from_json(&json).unwrap();
    t.entries[0].proof[0][3] ^= 1;
    assert!(t.verify(&auditor_key).is_err(), "changed proof");
    let mut t = Bundle::from_json(&json).unwrap();
    let dup = t.entries[0].clone();
    t.entries.push(dup);
    assert!(t.verify(&auditor_key).is_err(), "duplicate");
    let other = SoftwareSigner::from_bytes(&[9; 32]).unwrap();
    let other_key = strongroom_audit::LogKey::new(
        crate::common::ORIGIN,
        strongroom_audit::CheckpointSigner::public_key(&other),
    )
    .unwrap();
    assert!(
        Bundle::from_json(&json)
            .unwrap()
            .verify(&other_key)
            .is_err(),
        "other key"
    );
}
