//! Certificate pinning for the connection to the hosted core (R21): only configured root
//! CAs are trusted, each must carry BasicConstraints `cA` with `pathLenConstraint` 0 (it
//! issues no intermediates), and a chain with an intermediate is refused even if it would
//! otherwise validate. Chain validation itself is rustls/webpki's; we only narrow it.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Checks that a root may be pinned: a CA certificate with `pathLenConstraint` 0.
pub fn check_pinnable_root(der: &[u8]) -> anyhow::Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("parsing a pinned root")?;
    let bc = cert
        .basic_constraints()
        .ok()
        .flatten()
        .context("pinned root has no BasicConstraints extension")?;
    if !bc.value.ca {
        bail!("pinned root {} is not a CA certificate", cert.subject());
    }
    if bc.value.path_len_constraint != Some(0) {
        bail!(
            "pinned root {} must have pathLenConstraint 0 (it may issue intermediates: {:?})",
            cert.subject(),
            bc.value.path_len_constraint
        );
    }
    Ok(())
}

/// A rustls verifier that trusts only the pinned roots and refuses intermediates.
#[derive(Debug)]
pub struct PinnedVerifier {
    roots: Vec<CertificateDer<'static>>,
    inner: Arc<WebPkiServerVerifier>,
}

impl PinnedVerifier {
    pub fn new(roots: Vec<CertificateDer<'static>>) -> anyhow::Result<Self> {
        if roots.is_empty() {
            bail!("no root CA is pinned for the core connection");
        }
        let mut store = rustls::RootCertStore::empty();
        for r in &roots {
            check_pinnable_root(r)?;
            store.add(r.clone()).context("adding a pinned root")?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .context("building the pinned verifier")?;
        Ok(Self { roots, inner })
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // A server may append the root itself; anything else is an intermediate.
        if intermediates
            .iter()
            .any(|c| !self.roots.iter().any(|r| r.as_ref() == c.as_ref()))
        {
            return Err(rustls::Error::General(
                "the core's chain has an intermediate certificate; pinned roots issue leaves directly (R21)".into(),
            ));
        }
        self.inner
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads pinned roots from a PEM file and checks each is pinnable.
pub fn load_roots(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    let roots = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    for r in &roots {
        check_pinnable_root(r)?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(roots)
}

/// A TLS 1.3 client configuration for the core connection, pinned.
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let verifier = Arc::new(PinnedVerifier::new(roots)?);
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    fn ca(path_len: Option<u8>) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        let cert = p.self_signed(&key).unwrap();
        (cert.der().clone(), Issuer::new(p, key))
    }

    fn leaf(issuer: &Issuer<'static, KeyPair>) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(vec!["core.strongroom.test".to_owned()]).unwrap();
        p.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn verify(
        v: &PinnedVerifier,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("core.strongroom.test").unwrap();
        v.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn pinned_root_with_path_len_zero_is_trusted() {
        let (root, issuer) = ca(Some(0));
        let v = PinnedVerifier::new(vec![root.clone()]).unwrap();
        let l = leaf(&issuer);
        verify(&v, &l, &[]).unwrap();
        verify(&v, &l, &[root]).unwrap();
    }

    #[test]
    fn chains_with_an_intermediate_are_refused() {
        // Root may issue one level; it issues an intermediate that issues the leaf.
        let (root, root_issuer) = ca(Some(1));
        assert!(
            PinnedVerifier::new(vec![root.clone()]).is_err(),
            "pathLen 1 root refused at load"
        );
        // Even with a pathLen-0 pinned root, a chain carrying an extra certificate fails.
        let (root0, issuer0) = ca(Some(0));
        let v = PinnedVerifier::new(vec![root0]).unwrap();
        let l = leaf(&issuer0);
        let err = verify(&v, &l, &[root]).unwrap_err();
        assert!(err.to_string().contains("intermediate"), "{err}");
        let _ = root_issuer;
    }

    #[test]
    fn unpinned_roots_are_refused() {
        let (pinned, _) = ca(Some(0));
        let (_, other) = ca(Some(0));
        let v = PinnedVerifier::new(vec![pinned]).unwrap();
        assert!(verify(&v, &leaf(&other), &[]).is_err());
    }

    #[test]
    fn unconstrained_and_non_ca_roots_cannot_be_pinned() {
        let (unconstrained, issuer) = ca(None);
        assert!(check_pinnable_root(&unconstrained).is_err());
        assert!(check_pinnable_root(&leaf(&issuer)).is_err());
        assert!(PinnedVerifier::new(vec![]).is_err());
    }
}
