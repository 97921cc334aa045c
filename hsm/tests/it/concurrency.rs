//! Many threads on one `Hsm`, with and without sessions being pulled away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier;
use sha1::Sha1;
use sha2::Sha256;
use strongroom_hsm::{Hsm, RsaScheme};

use crate::fixture::{ec_key, hsm_with_keys, rsa_key};

struct Fixtures {
    rsa: rsa::PublicKey,
    ec: p256::ecdsa::VerifyingKey,
    ciphertext: Vec<u8>,
    blob: Vec<u8>,
}

const PLAINTEXT: &[u8] = b"concurrent handshake secret";
const KEK: [u8; 32] = [0x3c; 32];

fn fixtures(hsm: &Hsm) -> Fixtures {
    let rsa = rsa_key(hsm);
    let ciphertext = rsa.oaep_encrypt::<Sha1>(PLAINTEXT).unwrap();
    Fixtures {
        ec: ec_key(hsm),
        blob: hsm.wrap_key(&KEK).unwrap(),
        rsa,
        ciphertext,
    }
}

/// One operation of the mix, its result checked.
fn mixed_op(hsm: &Hsm, f: &Fixtures, thread: usize, i: usize) {
    let message = format!("thread {thread} op {i}");
    let message = message.as_bytes();
    match (thread + i) % 5 {
        0 => {
            let sig = hsm.rsa_sign(RsaScheme::Pkcs1v15Sha256, message).unwrap();
            f.rsa.pkcs1v15_verify::<Sha256>(message, &sig).unwrap();
        }
        1 => {
            let sig = hsm.rsa_sign(RsaScheme::PssSha256, message).unwrap();
            f.rsa.pss_verify::<Sha256>(message, &sig).unwrap();
        }
        2 => {
            let plain = hsm.rsa_oaep_sha1_decrypt(&f.ciphertext).unwrap();
            assert_eq!(plain.as_slice(), PLAINTEXT);
        }
        3 => assert_eq!(*hsm.unwrap_key(&f.blob).unwrap(), KEK),
        _ => {
            let sig = hsm.ecdsa_p256_sign(message).unwrap();
            f.ec.verify(message, &Signature::from_slice(&sig).unwrap())
                .unwrap();
        }
    }
}

/// Test 7: 8 threads x 200 mixed operations, all succeed and all results check out.
#[test]
fn eight_threads_mixed_operations() {
    let (hsm, _config) = hsm_with_keys("concurrency");
    let f = Arc::new(fixtures(&hsm));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (hsm, f, done) = (hsm.clone(), Arc::clone(&f), Arc::clone(&done));
            thread::spawn(move || {
                for i in 0..200 {
                    mixed_op(&hsm, &f, t, i);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker panicked");
    }
    let elapsed = start.elapsed();
    assert_eq!(done.load(Ordering::Relaxed), 1600);
    eprintln!(
        "1600 mixed ops in {elapsed:?}: {:.0} ops/s",
        1600.0 / elapsed.as_secs_f64()
    );
}

/// Recovery under load: sessions are closed again and again while 4 threads work.
#[test]
fn operations_survive_concurrent_close_all_sessions() {
    let (hsm, _config) = hsm_with_keys("close-under-load");
    let f = Arc::new(fixtures(&hsm));
    let stop = Arc::new(AtomicBool::new(false));
    let resets = {
        let (hsm, stop) = (hsm.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let mut resets = 0;
            while !stop.load(Ordering::Relaxed) {
                hsm.close_all_sessions().unwrap();
                resets += 1;
                thread::sleep(Duration::from_millis(3));
            }
            resets
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (hsm, f) = (hsm.clone(), Arc::clone(&f));
            thread::spawn(move || {
                for i in 0..100 {
                    mixed_op(&hsm, &f, t, i);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker panicked");
    }
    stop.store(true, Ordering::Relaxed);
    let resets = resets.join().unwrap();
    assert!(resets > 5, "only {resets} resets happened");
}
