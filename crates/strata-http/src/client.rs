//! The outbound HTTP client Strata's own requests use (CDN purge hooks, HTTP sources): HTTP/1.1 on hyper, over
//! TLS for `https://` — rustls on the `ring` provider, trusting Mozilla's roots (`webpki-roots`, compiled in, so
//! a bare machine needs no CA bundle) plus any extra PEM certificates (a private CA). Certificates are always
//! verified against the URL's host name or IP address; there is no switch to turn that off.
//!
//! The client proxy's own origin connections are plain HTTP (an origin sits beside the proxy); this one is for
//! the APIs out on the internet.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
pub use rustls::pki_types::CertificateDer;

/// A client for `http://` and `https://` URLs.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The PEM certificates in `path`, as extra trust anchors; an error names the file and what is wrong with it.
pub fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// A client trusting Mozilla's roots and `extra`: TLS for `https://`, plain for `http://`.
pub fn https_client(extra: &[CertificateDer<'static>]) -> Result<HttpsClient, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for c in extra {
        roots
            .add(c.clone())
            .map_err(|e| rustls::Error::General(format!("a CA certificate: {e}")))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// An error with the causes beneath it (hyper's own message hides why a connection failed, e.g. a refused
/// certificate).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}
