//! TLS settings made into rustls configurations: certificates, verifiers, versions and suites.
//!
//! The supervisor builds these once at start and at every reload, so a bad certificate file
//! refuses the reload and the running configuration stays; each worker then builds its own
//! from the same files. The handshake itself runs in the event loop, in [`crate::stream`].

use crate::config::{Config, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use std::sync::Arc;

/// ALPN protocol name PostgreSQL 17 asks for (and requires with direct TLS).
pub const ALPN: &[u8] = b"postgresql";

/// The TLS configurations one worker uses.
#[derive(Clone, Default)]
pub struct Tls {
    /// For clients that ask for TLS; `None` when client_tls_sslmode is disable.
    pub accept: Option<Accept>,
    /// For connections to PostgreSQL; `None` when server_tls_sslmode is disable.
    pub connect: Option<Arc<rustls::ClientConfig>>,
}

impl Tls {
    /// Reads the files the config names and builds both sides' configurations.
    pub fn load(cfg: &Config) -> Result<Tls, String> {
        let accept = match cfg.client_tls_sslmode {
            TlsMode::Disable => None,
            mode => {
                let (config, endpoint) =
                    accept_config(cfg, mode).map_err(|e| format!("client TLS: {e}"))?;
                Some(Accept {
                    config: Arc::new(config),
                    endpoint: endpoint.map(Arc::from),
                })
            }
        };
        let connect = match cfg.server_tls_sslmode {
            TlsMode::Disable => None,
            mode => Some(Arc::new(
                connect_config(cfg, mode).map_err(|e| format!("server TLS: {e}"))?,
            )),
        };
        Ok(Tls { accept, connect })
    }
}

/// What a client's TLS session is made with.
#[derive(Clone)]
pub struct Accept {
    pub config: Arc<rustls::ServerConfig>,
    /// tls-server-end-point channel binding data of the certificate (RFC 5929): its hash
    /// under its signature's hash function, SHA-256 for MD5 and SHA-1. `None` for
    /// signatures RFC 5929 gives no hash (Ed25519, RSA-PSS): SCRAM-SHA-256-PLUS is then not
    /// offered, as PostgreSQL cannot offer it either.
    pub endpoint: Option<Arc<[u8]>>,
}

/// The tls-server-end-point hash of a DER certificate.
pub fn endpoint_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(
        match cert.signature_algorithm.algorithm.to_id_string().as_str() {
            // sha256, and md5 and sha1 (RSA and ECDSA) which RFC 5929 replaces with sha256.
            "1.2.840.113549.1.1.11"
            | "1.2.840.10045.4.3.2"
            | "1.2.840.113549.1.1.4"
            | "1.2.840.113549.1.1.5"
            | "1.2.840.10045.4.1" => sha2::Sha256::digest(der).to_vec(),
            "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(der).to_vec(),
            "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(der).to_vec(),
            _ => return None,
        },
    )
}

/// The subject's common name of a DER certificate: the user for `auth_type: cert`.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Checks the words of the protocol and cipher settings, which need no file.
pub fn check_words(cfg: &Config) -> Result<(), String> {
    versions("client_tls_protocols", &cfg.client_tls_protocols)?;
    versions("server_tls_protocols", &cfg.server_tls_protocols)?;
    provider("client_tls_ciphers", &cfg.client_tls_ciphers)?;
    provider("server_tls_ciphers", &cfg.server_tls_ciphers)?;
    Ok(())
}

fn accept_config(
    cfg: &Config,
    mode: TlsMode,
) -> Result<(rustls::ServerConfig, Option<Vec<u8>>), String> {
    let (Some(cert), Some(key)) = (&cfg.client_tls_cert_file, &cfg.client_tls_key_file) else {
        return Err("client_tls_sslmode needs client_tls_cert_file and client_tls_key_file".into());
    };
    let chain = certs("client_tls_cert_file", cert)?;
    let endpoint = endpoint_hash(&chain[0]);
    let key = private_key("client_tls_key_file", key)?;
    let side = Side::new("client", &cfg.client_tls_ciphers, &cfg.client_tls_protocols)?;
    let builder = rustls::ServerConfig::builder_with_provider(side.provider.clone())
        .with_protocol_versions(&side.versions)
        .map_err(|e| format!("client_tls_protocols: {e}"))?;
    let builder = match side.roots(mode, cfg.client_tls_ca_file.as_deref())? {
        Some((roots, ca)) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, side.provider)
                .build()
                .map_err(|e| format!("client_tls_ca_file {ca}: {e}"))?,
        ),
        // PgBouncer: below verify-ca, a client certificate is not asked for or checked.
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("client_tls_cert_file {cert} and client_tls_key_file: {e}"))?;
    // A client that offers ALPN must offer PostgreSQL's, as PostgreSQL 17 insists; one that
    // offers none (every libpq before 17) is served.
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok((config, endpoint))
}

fn connect_config(cfg: &Config, mode: TlsMode) -> Result<rustls::ClientConfig, String> {
    let side = Side::new("server", &cfg.server_tls_ciphers, &cfg.server_tls_protocols)?;
    let builder = rustls::ClientConfig::builder_with_provider(side.provider.clone())
        .with_protocol_versions(&side.versions)
        .map_err(|e| format!("server_tls_protocols: {e}"))?;
    let builder = match side.roots(mode, cfg.server_tls_ca_file.as_deref())? {
        Some((roots, ca)) => {
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, side.provider)
                    .build()
                    .map_err(|e| format!("server_tls_ca_file {ca}: {e}"))?;
            if mode == TlsMode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(side.provider))),
    };
    let mut config = match (&cfg.server_tls_cert_file, &cfg.server_tls_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certs("server_tls_cert_file", cert)?,
                private_key("server_tls_key_file", key)?,
            )
            .map_err(|e| format!("server_tls_cert_file {cert} and server_tls_key_file: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("server_tls_cert_file and server_tls_key_file go together".into()),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// What `client_tls_*` or `server_tls_*` choose alike: suites, versions and the CA.
struct Side {
    name: &'static str,
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
}

impl Side {
    fn new(name: &'static str, ciphers: &str, protocols: &str) -> Result<Side, String> {
        Ok(Side {
            name,
            provider: Arc::new(provider(&format!("{name}_tls_ciphers"), ciphers)?),
            versions: versions(&format!("{name}_tls_protocols"), protocols)?,
        })
    }

    /// The CA to check the peer's certificate against, with its file name: `None` below
    /// verify-ca, and an error when a verifying mode has no `<side>_tls_ca_file`.
    fn roots<'a>(
        &self,
        mode: TlsMode,
        ca: Option<&'a str>,
    ) -> Result<Option<(Arc<rustls::RootCertStore>, &'a str)>, String> {
        if !mode.verifies() {
            return Ok(None);
        }
        let Some(ca) = ca else {
            return Err(format!(
                "{name}_tls_sslmode {mode} needs {name}_tls_ca_file",
                name = self.name
            ));
        };
        let roots = roots(&format!("{}_tls_ca_file", self.name), ca)?;
        Ok(Some((Arc::new(roots), ca)))
    }
}

/// The TLS versions a `*_tls_protocols` value allows. rustls has no TLS 1.0 or 1.1, so
/// naming only those is refused; `all` and `legacy` mean every version rustls has.
fn versions(key: &str, value: &str) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let (mut v12, mut v13) = (false, false);
    for word in value.split([',', ':', ' ']).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "secure" | "all" | "legacy" => (v12, v13) = (true, true),
            "tlsv1.2" => v12 = true,
            "tlsv1.3" => v13 = true,
            "tlsv1.0" | "tlsv1" | "tlsv1.1" => {
                return Err(format!(
                    "{key}: {word} is not supported: TLS before 1.2 is insecure and rustls does not implement it"
                ))
            }
            _ => {
                return Err(format!(
                    "{key}: unknown protocol {word:?} (use secure, all, tlsv1.2, tlsv1.3)"
                ))
            }
        }
    }
    let mut out = Vec::new();
    if v13 {
        out.push(&rustls::version::TLS13);
    }
    if v12 {
        out.push(&rustls::version::TLS12);
    }
    if out.is_empty() {
        return Err(format!("{key} is empty"));
    }
    Ok(out)
}

/// ring's provider with the suites a `*_tls_ciphers` value names. PgBouncer's keywords
/// (default, secure, fast, normal, compat, legacy, all) keep rustls's own list, which has
/// only AEAD suites with forward secrecy; a colon list of OpenSSL or IANA suite names picks
/// from it. OpenSSL's selection syntax (HIGH, !aNULL, ...) is refused: rustls has nothing weak
/// to select away.
fn provider(key: &str, value: &str) -> Result<CryptoProvider, String> {
    // rustls deprecates ring's provider for lacking post-quantum key exchange; aws-lc-rs
    // has it but needs cmake to build. Revisit when the build host has it.
    #[allow(deprecated)]
    let mut provider = ring::default_provider();
    let keyword = matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "default" | "secure" | "fast" | "normal" | "compat" | "legacy" | "all"
    );
    if keyword {
        return Ok(provider);
    }
    let mut chosen = Vec::new();
    for word in value.split(':').map(str::trim).filter(|w| !w.is_empty()) {
        let found = provider
            .cipher_suites
            .iter()
            .find(|s| openssl_name(s.suite()) == Some(word) || iana_name(s.suite()) == word);
        match found {
            Some(s) => chosen.push(*s),
            None => {
                let known: Vec<&str> = provider
                    .cipher_suites
                    .iter()
                    .filter_map(|s| openssl_name(s.suite()))
                    .collect();
                return Err(format!(
                    "{key}: {word:?} is not a cipher suite rustls offers; use default, or a colon list of: {}",
                    known.join(":")
                ));
            }
        }
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

/// `TLS13_AES_256_GCM_SHA384` as the IANA registry and OpenSSL's TLS 1.3 names write it.
fn iana_name(s: rustls::CipherSuite) -> String {
    format!("{s:?}").replacen("TLS13_", "TLS_", 1)
}

/// OpenSSL's name of a suite, as PgBouncer shows it and as its cipher lists are written.
pub fn openssl_name(s: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match s {
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// `TLSv1.3/TLS_AES_256_GCM_SHA384`: the `tls` column of SHOW CLIENTS and SHOW SERVERS.
pub fn describe(conn: &rustls::CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    match conn.negotiated_cipher_suite() {
        Some(s) => match openssl_name(s.suite()) {
            Some(name) => format!("{version}/{name}"),
            None => format!("{version}/{:?}", s.suite()),
        },
        None => version.to_string(),
    }
}

/// The server name a connection to `host` checks the certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, String> {
    // Certificates and keys are small; a huge file is a mistake.
    const MAX: u64 = 1 << 20;
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{key} {path}: {e}"))?;
    let mut out = Vec::new();
    f.take(MAX + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{key} {path}: {e}"))?;
    if out.len() as u64 > MAX {
        return Err(format!("{key} {path}: larger than 1 MiB"));
    }
    Ok(out)
}

fn certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(key, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key} {path}: no certificate in the file"));
    }
    Ok(certs)
}

fn private_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The error never quotes the file: it holds a secret.
    PrivateKeyDer::from_pem_slice(&read(key, path)?)
        .map_err(|_| format!("{key} {path}: no PEM private key could be read from the file"))
}

fn roots(key: &str, path: &str) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(key, path)? {
        store.add(cert).map_err(|e| format!("{key} {path}: {e}"))?;
    }
    Ok(store)
}

/// verify-ca: the chain must lead to the CA; the name is not checked. rustls checks the
/// chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer and require: encryption without authentication, as libpq's sslmode=require. The
/// handshake signatures are still checked, so the session keys belong to whoever holds
/// the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_words() {
        assert_eq!(versions("k", "secure").unwrap().len(), 2);
        assert_eq!(versions("k", "tlsv1.3").unwrap().len(), 1);
        assert_eq!(versions("k", "tlsv1.2, tlsv1.3").unwrap().len(), 2);
        let e = versions("k", "tlsv1.1").unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        assert!(versions("k", "sslv3").is_err());
        assert!(versions("k", "").is_err());
    }

    #[test]
    fn cipher_words() {
        #[allow(deprecated)]
        let all = ring::default_provider().cipher_suites.len();
        assert_eq!(provider("k", "default").unwrap().cipher_suites.len(), all);
        let p = provider("k", "ECDHE-RSA-AES256-GCM-SHA384:TLS_AES_128_GCM_SHA256").unwrap();
        assert_eq!(p.cipher_suites.len(), 2);
        let e = provider("k", "HIGH:!aNULL").unwrap_err();
        assert!(e.contains("HIGH"), "{e}");
        assert!(provider("k", "RC4-MD5").is_err());
    }

    #[test]
    fn modes_need_their_files() {
        let cfg = Config::from_yaml_str("client_tls_sslmode: require").unwrap();
        let e = Tls::load(&cfg).err().unwrap();
        assert!(e.contains("client_tls_cert_file"), "{e}");
        let cfg = Config::from_yaml_str("server_tls_sslmode: verify-full").unwrap();
        let e = Tls::load(&cfg).err().unwrap();
        assert!(e.contains("server_tls_ca_file"), "{e}");
        // prefer needs nothing: the certificate is not checked.
        let cfg = Config::from_yaml_str("server_tls_sslmode: prefer").unwrap();
        let tls = Tls::load(&cfg).unwrap();
        assert!(tls.accept.is_none() && tls.connect.is_some());
    }
}
