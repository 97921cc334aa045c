//! Validated identifiers that may appear in a record. Each type accepts only one shape
//! (a DNS name, or a `kms://<domain>/keys|resources/<uuid>` URI), so a record field
//! cannot carry free text: no key bytes, token, plaintext or personal name fits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

const MAX_DOMAIN: usize = 253;

/// A KMS domain (`kms.example.com`, optionally `:port`): lower-case letters, digits,
/// `-` and `.`, labels of at most 63 and names of at most 253 characters; the KMS's and
/// federation peers' names.
///
/// The one field shape that is still text: a caller could spell data as DNS labels.
/// Take domains from configuration (this KMS's domain, the configured federation
/// peers; the KMS already refuses URIs of other domains), never from request text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_domain(s: &str) -> Result<()> {
    let bad = |reason| Error::InvalidField {
        field: "domain",
        reason,
    };
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if host.is_empty() || s.len() > MAX_DOMAIN {
        return Err(bad("must be 1 to 253 characters"));
    }
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !host_ok || host.starts_with(['.', '-']) || host.contains("..") {
        return Err(bad("only lower-case DNS names are accepted"));
    }
    if host.split('.').any(|label| label.len() > 63) {
        return Err(bad("a DNS label is at most 63 characters"));
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("the port must be 1 to 5 digits"));
    }
    Ok(())
}

impl FromStr for Domain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        check_domain(s)?;
        Ok(Domain(s.to_owned()))
    }
}

impl TryFrom<String> for Domain {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        check_domain(&s)?;
        Ok(Domain(s))
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `kms://<domain>/<collection>/<uuid>` into its parts; the UUID must be in the
/// canonical lower-case hyphenated form so that one object has one spelling.
fn parse_kms_uri(s: &str, collection: &str, field: &'static str) -> Result<(Domain, Uuid)> {
    let bad = |reason| Error::InvalidField { field, reason };
    let rest = s
        .strip_prefix("kms://")
        .ok_or(bad("must start with kms://"))?;
    let (domain, path) = rest.split_once('/').ok_or(bad("missing path"))?;
    let id = path
        .strip_prefix(collection)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or(bad("wrong collection in path"))?;
    let uuid = Uuid::parse_str(id).map_err(|_| bad("the last segment must be a UUID"))?;
    // Parsed, 36 characters and no upper case: exactly the lower-case hyphenated form.
    if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("the UUID must be lower-case and hyphenated"));
    }
    Ok((domain.parse()?, uuid))
}

macro_rules! kms_uri {
    ($(#[$doc:meta])* $name:ident, $collection:literal, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Builds the URI from its parts (cannot fail).
            pub fn new(domain: &Domain, id: Uuid) -> Self {
                $name(format!(concat!("kms://{}/", $collection, "/{}"), domain, id.hyphenated()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The object's UUID.
            pub fn id(&self) -> Uuid {
                // INVARIANT: the string was built or validated by `parse_kms_uri`.
                parse_kms_uri(&self.0, $collection, $field).map_or(Uuid::nil(), |(_, u)| u)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                parse_kms_uri(s, $collection, $field)?;
                Ok($name(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                parse_kms_uri(&s, $collection, $field)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(u: $name) -> String {
                u.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

kms_uri!(
    /// `kms://<domain>/keys/<uuid>`: a key's URI (R7). Names the key, never holds it.
    KeyUri,
    "keys",
    "key"
);
kms_uri!(
    /// `kms://<domain>/resources/<uuid>`: a resource (a room) whose keys are bound to it.
    ResourceUri,
    "resources",
    "resource"
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_uri_round_trips_and_rejects_other_shapes() {
        let d: Domain = "kms.example.com".parse().unwrap();
        let id = Uuid::new_v4();
        let k = KeyUri::new(&d, id);
        assert_eq!(k.as_str().parse::<KeyUri>().unwrap(), k);
        assert_eq!(k.id(), id);
        for bad in [
            "kms://kms.example.com/keys/not-a-uuid",
            "kms://kms.example.com/resources/00000000-0000-0000-0000-000000000000",
            "https://kms.example.com/keys/00000000-0000-0000-0000-000000000000",
            "kms://KMS.example.com/keys/00000000-0000-0000-0000-000000000000",
            "kms://kms.example.com/keys/00000000-0000-0000-0000-00000000000A",
            "kms://a b/keys/00000000-0000-0000-0000-000000000000",
            "kms://kms.example.com/keys/00000000000000000000000000000000",
        ] {
            assert!(bad.parse::<KeyUri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_dns_names_only() {
        assert!("a.example:8443".parse::<Domain>().is_ok());
        let long_label = format!("{}.example", "a".repeat(64));
        for bad in [
            "",
            "-a",
            "a..b",
            "A.example",
            "a.example:",
            "a.example:123456",
            "a/b",
            &long_label,
        ] {
            assert!(bad.parse::<Domain>().is_err(), "{bad}");
        }
    }
}
