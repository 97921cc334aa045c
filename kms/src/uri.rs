//! KMS URIs (R7): `kms://<domain>/keys/<uuid>` and friends. Requests may name a URI
//! relative (`/keys`) or absolute (`kms://<domain>/keys`); both are accepted (protocol.md).

use uuid::Uuid;

use crate::error::KmsError;

/// What a request URI addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ecdhe,
    Channel(Uuid),
    Keys,
    Key(Uuid),
    Resources,
    Resource(Uuid),
    ResourceKeys(Uuid),
    ResourceAuthorizations {
        resource: Uuid,
        auth_id: Option<String>,
    },
    Authorizations,
    Ping,
}

/// URI builder and parser bound to this KMS's domain.
#[derive(Debug, Clone)]
pub struct Uris {
    domain: String,
    base: String,
}

impl Uris {
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            base: format!("kms://{domain}"),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `kms://<domain>`: the cluster URI.
    pub fn cluster(&self) -> &str {
        &self.base
    }

    pub fn key(&self, id: Uuid) -> String {
        format!("{}/keys/{id}", self.base)
    }
    pub fn resource(&self, id: Uuid) -> String {
        format!("{}/resources/{id}", self.base)
    }
    pub fn authorization(&self, resource: Uuid, id: Uuid) -> String {
        format!("{}/resources/{resource}/authorizations/{id}", self.base)
    }
    pub fn channel(&self, id: Uuid) -> String {
        format!("{}/ecdhe/{id}", self.base)
    }
    pub fn ecdhe(&self) -> String {
        format!("{}/ecdhe", self.base)
    }
    pub fn static_kid(&self) -> String {
        format!("{}/static/rsa", self.base)
    }

    /// Strips `kms://<domain>` from an absolute URI; refuses another KMS's URI.
    fn path<'a>(&self, uri: &'a str) -> Result<&'a str, KmsError> {
        if let Some(rest) = uri.strip_prefix("kms://") {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if !host.eq_ignore_ascii_case(&self.domain) {
                return Err(KmsError::NotFound(format!(
                    "URI names another KMS ({host}); federation is not enabled"
                )));
            }
            Ok(path)
        } else if uri.starts_with('/') {
            Ok(uri)
        } else {
            Err(KmsError::BadRequest(
                "uri must be absolute or start with '/'".into(),
            ))
        }
    }

    pub fn parse(&self, uri: &str) -> Result<Target, KmsError> {
        let path = self.path(uri)?;
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let id = |s: &str| {
            Uuid::parse_str(s).map_err(|_| KmsError::NotFound(format!("no such object: {uri}")))
        };
        let target = match segs.as_slice() {
            ["ecdhe"] => Target::Ecdhe,
            ["ecdhe", c] => Target::Channel(id(c)?),
            ["keys"] => Target::Keys,
            ["keys", k] => Target::Key(id(k)?),
            ["resources"] => Target::Resources,
            ["resources", r] => Target::Resource(id(r)?),
            ["resources", r, "keys"] => Target::ResourceKeys(id(r)?),
            ["resources", r, "authorizations"] => Target::ResourceAuthorizations {
                resource: id(r)?,
                auth_id: query.map(parse_auth_query).transpose()?,
            },
            ["authorizations"] => Target::Authorizations,
            ["ping"] => Target::Ping,
            _ => return Err(KmsError::NotFound(format!("no such object: {uri}"))),
        };
        if query.is_some() && !matches!(target, Target::ResourceAuthorizations { .. }) {
            return Err(KmsError::BadRequest("unexpected query string".into()));
        }
        Ok(target)
    }

    /// A resource URI (absolute or relative) to its id.
    pub fn resource_id(&self, uri: &str) -> Result<Uuid, KmsError> {
        match self.parse(uri)? {
            Target::Resource(r) => Ok(r),
            _ => Err(KmsError::BadRequest(format!("not a resource URI: {uri}"))),
        }
    }

    pub fn key_id(&self, uri: &str) -> Result<Uuid, KmsError> {
        match self.parse(uri)? {
            Target::Key(k) => Ok(k),
            _ => Err(KmsError::BadRequest(format!("not a key URI: {uri}"))),
        }
    }
}

fn parse_auth_query(q: &str) -> Result<String, KmsError> {
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("authId=") {
            return percent_decode(v).ok_or_else(|| {
                KmsError::BadRequest("authId is not valid percent-encoding".into())
            });
        }
    }
    Err(KmsError::BadRequest("query must carry authId".into()))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(if b == b'+' { b' ' } else { b });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_and_absolute() {
        let u = Uris::new("kms.example.com");
        let id = Uuid::new_v4();
        assert_eq!(u.parse("/keys").unwrap(), Target::Keys);
        assert_eq!(u.parse("kms://kms.example.com/keys").unwrap(), Target::Keys);
        assert_eq!(u.parse(&u.key(id)).unwrap(), Target::Key(id));
        assert!(matches!(
            u.parse("kms://other.example.com/keys"),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(u.parse("/nope"), Err(KmsError::NotFound(_))));
        assert!(matches!(u.parse("keys"), Err(KmsError::BadRequest(_))));
    }

    #[test]
    fn auth_query_is_percent_decoded() {
        let u = Uris::new("k");
        let r = Uuid::new_v4();
        let other = u.resource(Uuid::new_v4());
        let enc = other.replace(':', "%3A").replace('/', "%2F");
        let t = u
            .parse(&format!("/resources/{r}/authorizations?authId={enc}"))
            .unwrap();
        assert_eq!(
            t,
            Target::ResourceAuthorizations {
                resource: r,
                auth_id: Some(other)
            }
        );
    }
}
