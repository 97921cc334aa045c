//! Certificates for the static RSA key, whose private half never leaves the HSM: rcgen
//! builds the TBS certificate or CSR and the HSM signs it (RS256). The static JWK publishes
//! the certificate in `x5c`; its SAN is the `kid` host (protocol.md "Static key").

use anyhow::Context as _;
use rsa::pkcs1::EncodeRsaPublicKey as _;
use strongroom_hsm::{Hsm, RsaScheme};

/// rcgen's view of the HSM-held static key.
struct HsmRsaKey {
    hsm: Hsm,
    pkcs1_der: Vec<u8>,
}

impl rcgen::PublicKeyData for HsmRsaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.pkcs1_der
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for HsmRsaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.hsm
            .rsa_sign(RsaScheme::Pkcs1v15Sha256, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

fn hsm_key(hsm: &Hsm) -> anyhow::Result<HsmRsaKey> {
    let public = hsm.rsa_public_key()?;
    let bits = u32::try_from(public.modulus.len() * 8)?;
    let n = rsa::BoxedUint::from_be_slice(&public.modulus, bits)
        .map_err(|e| anyhow::anyhow!("modulus: {e:?}"))?;
    let e = rsa::BoxedUint::from_be_slice(&public.public_exponent, 64)
        .map_err(|e| anyhow::anyhow!("exponent: {e:?}"))?;
    let key = rsa::PublicKey::new(n, e).context("static RSA public key")?;
    let der = key
        .to_pkcs1_der()
        .context("encoding the static public key")?;
    Ok(HsmRsaKey {
        hsm: hsm.clone(),
        pkcs1_der: der.as_bytes().to_vec(),
    })
}

fn params(domain: &str) -> anyhow::Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, domain.to_owned());
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "strongroom KMS");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(p)
}

/// A self-signed certificate for trials and dev mode (DER).
pub fn self_signed_static(hsm: &Hsm, domain: &str) -> anyhow::Result<Vec<u8>> {
    let key = hsm_key(hsm)?;
    let mut p = params(domain)?;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(365);
    let cert = p
        .self_signed(&key)
        .context("signing the certificate in the HSM")?;
    Ok(cert.der().to_vec())
}

/// A CSR (PEM) for a real CA to sign.
pub fn csr_static(hsm: &Hsm, domain: &str) -> anyhow::Result<String> {
    let key = hsm_key(hsm)?;
    let csr = params(domain)?
        .serialize_request(&key)
        .context("signing the CSR in the HSM")?;
    Ok(csr.pem()?)
}

/// Checks that a certificate is usable in the static JWK: its public key is the HSM's
/// RSA key and its SAN (or CN) names the KMS domain.
pub fn check_static_cert(der: &[u8], hsm: &Hsm, domain: &str) -> anyhow::Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("parsing certificate")?;
    let key = hsm_key(hsm)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.pkcs1_der.as_slice() {
        anyhow::bail!("the certificate's public key is not the HSM's static RSA key");
    }
    let san_ok = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|n| {
                matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(domain))
            })
        });
    if !san_ok {
        anyhow::bail!("the certificate's SAN does not name {domain}");
    }
    Ok(())
}
