//! The record format written by the crash test, and the ACK line that proves a
//! record was acknowledged as durable.
//!
//! A record is `id -> value` with a 16-byte id and a 96-byte value: 32 random
//! bytes followed by 64 bytes derived from the id (SHA-512 over a domain tag and
//! the id). The derived half lets the checker tell a self-consistent record from
//! a torn, shifted or foreign one without the ACK file; the random half makes
//! every value unique, so a stale or swapped value cannot match the acknowledged hash.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngExt};
use sha2::{Digest, Sha256, Sha512};

pub const ID_LEN: usize = 16;
pub const RANDOM_LEN: usize = 32;
pub const DERIVED_LEN: usize = 64;
pub const VALUE_LEN: usize = RANDOM_LEN + DERIVED_LEN;

pub type Id = [u8; ID_LEN];
pub type ValueHash = [u8; 32];

const DERIVE_DOMAIN: &[u8] = b"strongroom storage-crash record v1\0";

/// One key/value pair as written to the store.
pub struct Record {
    pub id: Id,
    pub value: [u8; VALUE_LEN],
}

impl Record {
    /// A record with a fresh random half and the derived half for `id`.
    pub fn new<R: Rng + ?Sized>(id: Id, rng: &mut R) -> Self {
        let mut value = [0u8; VALUE_LEN];
        let (random, derived) = value.split_at_mut(RANDOM_LEN);
        rng.fill_bytes(random);
        derived.copy_from_slice(&derived_half(&id));
        Self { id, value }
    }

    pub fn hash(&self) -> ValueHash {
        value_hash(&self.value)
    }
}

/// The 64 bytes every value for `id` must end with.
pub fn derived_half(id: &Id) -> [u8; DERIVED_LEN] {
    let mut h = Sha512::new();
    h.update(DERIVE_DOMAIN);
    h.update(id);
    h.finalize().into()
}

/// SHA-256 of a stored value, as printed in ACK lines.
pub fn value_hash(value: &[u8]) -> ValueHash {
    Sha256::digest(value).into()
}

/// Why a stored key/value pair is not a record this tool could have written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inconsistency {
    KeyLength(usize),
    ValueLength(usize),
    DerivedHalfMismatch,
}

impl std::fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KeyLength(n) => write!(f, "key is {n} bytes, expected {ID_LEN}"),
            Self::ValueLength(n) => write!(f, "value is {n} bytes, expected {VALUE_LEN}"),
            Self::DerivedHalfMismatch => {
                write!(
                    f,
                    "value's last {DERIVED_LEN} bytes are not derived from the key"
                )
            }
        }
    }
}

/// Checks that `key`/`value` is a record this tool could have written.
pub fn self_consistent(key: &[u8], value: &[u8]) -> Result<Id, Inconsistency> {
    let id: Id = key
        .try_into()
        .map_err(|_| Inconsistency::KeyLength(key.len()))?;
    if value.len() != VALUE_LEN {
        return Err(Inconsistency::ValueLength(value.len()));
    }
    match value.split_at_checked(RANDOM_LEN) {
        Some((_, derived)) if derived == derived_half(&id) => Ok(id),
        _ => Err(Inconsistency::DerivedHalfMismatch),
    }
}

/// Hands out unique ids: a random per-process prefix and a counter, so ids
/// never repeat across the writer processes of a run that share one store.
pub struct IdSource {
    prefix: [u8; 8],
    counter: AtomicU64,
}

impl IdSource {
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self {
            prefix: rng.random(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> Id {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; ID_LEN];
        let (prefix, counter) = id.split_at_mut(8);
        prefix.copy_from_slice(&self.prefix);
        counter.copy_from_slice(&n.to_be_bytes());
        id
    }
}

/// `ACK <hex id> <hex sha256(value)>\n`
pub fn ack_line(id: &Id, hash: &ValueHash) -> String {
    format!("ACK {} {}\n", hex(id), hex(hash))
}

/// Parses one ACK line without its newline; `None` if it is not one.
pub fn parse_ack_line(line: &str) -> Option<(Id, ValueHash)> {
    let mut parts = line.split(' ');
    if parts.next()? != "ACK" {
        return None;
    }
    let id = unhex::<ID_LEN>(parts.next()?)?;
    let hash = unhex::<32>(parts.next()?)?;
    parts.next().is_none().then_some((id, hash))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_record_is_self_consistent_and_a_flipped_bit_is_not() {
        let mut rng = rand::rng();
        let ids = IdSource::new(&mut rng);
        let rec = Record::new(ids.next_id(), &mut rng);
        assert_eq!(self_consistent(&rec.id, &rec.value), Ok(rec.id));

        let mut torn = rec.value;
        if let Some(last) = torn.last_mut() {
            *last ^= 1;
        }
        assert_eq!(
            self_consistent(&rec.id, &torn),
            Err(Inconsistency::DerivedHalfMismatch)
        );
        assert_eq!(
            self_consistent(&rec.id, &rec.value[..95]),
            Err(Inconsistency::ValueLength(95))
        );
        assert_eq!(
            self_consistent(&rec.id[..15], &rec.value),
            Err(Inconsistency::KeyLength(15))
        );
    }

    #[test]
    fn ack_lines_round_trip_and_truncations_are_rejected() {
        let mut rng = rand::rng();
        let ids = IdSource::new(&mut rng);
        let rec = Record::new(ids.next_id(), &mut rng);
        let line = ack_line(&rec.id, &rec.hash());
        let body = line.trim_end_matches('\n');
        assert_eq!(parse_ack_line(body), Some((rec.id, rec.hash())));
        assert_eq!(parse_ack_line(&body[..body.len() - 1]), None);
        assert_eq!(parse_ack_line(&format!("{body} x")), None);
    }

    #[test]
    fn ids_are_unique_within_and_across_sources() {
        let mut rng = rand::rng();
        let a = IdSource::new(&mut rng);
        let b = IdSource::new(&mut rng);
        let (a0, a1, b0) = (a.next_id(), a.next_id(), b.next_id());
        assert_ne!(a0, a1);
        assert_ne!(a0, b0);
    }
}
