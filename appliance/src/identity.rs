//! The development identity provider behind `strongroom dev`'s `token_url`: an ES256 issuer
//! whose private key lives in the dev state directory (0600), so tokens keep verifying
//! after a restart on the same directory. Production KMSs trust their enterprise IdP's
//! keys instead (config `[[auth.issuers]]`); this module is never wired into `serve`.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde::Serialize;
use strongroom_kms::auth::Issuer;
use strongroom_kms::jose::b64e;
use uuid::Uuid;

use crate::files;

pub const DEV_ISSUER: &str = "https://idp.strongroom.test/dev";
const KID: &str = "dev-issuer-1";

pub struct DevIssuer {
    encoding: EncodingKey,
    public: p256::PublicKey,
    /// Every dev user belongs to this organisation unless told otherwise.
    pub org: Uuid,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    org: String,
    iat: i64,
    exp: i64,
    client_id: &'a str,
}

impl DevIssuer {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let key_path = dir.join("dev-issuer.p8");
        let org_path = dir.join("dev-org");
        let secret = if key_path.exists() {
            let der = files::read_secret_file(&key_path)?;
            p256::SecretKey::from_pkcs8_der(&der).context("dev issuer key is corrupt")?
        } else {
            let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
                &mut rand::rng(),
            );
            let der = sk.to_pkcs8_der().context("encoding the dev issuer key")?;
            files::write_secret_file(&key_path, der.as_bytes())?;
            sk
        };
        let org = if org_path.exists() {
            Uuid::parse_str(std::fs::read_to_string(&org_path)?.trim())?
        } else {
            let org = Uuid::new_v4();
            files::write_secret_file(&org_path, org.to_string().as_bytes())?;
            org
        };
        let der = secret
            .to_pkcs8_der()
            .context("encoding the dev issuer key")?;
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            public: secret.public_key(),
            org,
        })
    }

    /// The issuer as the KMS's token verifier sees it: its public JWK set.
    pub fn issuer(&self) -> anyhow::Result<Issuer> {
        let point = self.public.to_sec1_bytes();
        let (x, y) = point.get(1..).unwrap_or_default().split_at(32);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": KID, "use": "sig", "alg": "ES256",
            "x": b64e(x), "y": b64e(y)
        }]});
        Issuer::from_jwks(DEV_ISSUER, &jwks.to_string()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Mints a KMS token. `audience` and `ttl_s` exist so tests can ask for wrong-audience
    /// and expired tokens; dev mode only.
    pub fn mint(
        &self,
        user: Uuid,
        org: Uuid,
        client_id: &str,
        audience: &str,
        now_s: i64,
        ttl_s: i64,
    ) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.into());
        let claims = Claims {
            iss: DEV_ISSUER,
            aud: audience,
            sub: user.to_string(),
            org: org.to_string(),
            iat: now_s,
            exp: now_s + ttl_s,
            client_id,
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding).context("signing a dev token")
    }
}
