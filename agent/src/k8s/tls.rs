//! The TLS algorithms the agent offers the API server: rustls' *ring* provider without the
//! ones a Kubernetes API server never needs, so that the DaemonSet binary does not carry them.
//!
//! Kept: TLS 1.3 and 1.2 with AES-GCM; key exchange on P-256 and P-384 (Go's TLS stack, which
//! serves the API, always accepts P-256); server certificates signed with RSA (PKCS#1 and PSS)
//! or ECDSA P-256/P-384; client keys RSA or ECDSA. Left out: X25519, ChaCha20-Poly1305 and
//! Ed25519 (about 200 KB of code). A server or client key that needs one of them fails the
//! handshake or the key load with a message naming it.

use rustls::crypto::ring::cipher_suite as suite;
use rustls::crypto::ring::kx_group;
use rustls::crypto::ring::sign::{any_ecdsa_type, RsaSigningKey};
use rustls::crypto::{
    CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, WebPkiSupportedAlgorithms,
};
use rustls::sign::SigningKey;
use rustls::SignatureScheme;
use rustls_pki_types::PrivateKeyDer;
use std::sync::Arc;
use webpki::ring as alg;

/// The provider for every connection to the API server.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURES,
        secure_random: &SystemRandom,
        key_provider: &RsaOrEcdsaKeys,
    })
}

/// Server-certificate signatures the agent accepts: rustls' *ring* set without Ed25519.
static SIGNATURES: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        alg::ECDSA_P256_SHA256,
        alg::ECDSA_P256_SHA384,
        alg::ECDSA_P384_SHA256,
        alg::ECDSA_P384_SHA384,
        alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        alg::RSA_PKCS1_2048_8192_SHA256,
        alg::RSA_PKCS1_2048_8192_SHA384,
        alg::RSA_PKCS1_2048_8192_SHA512,
        alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // TLS 1.2 does not tie the curve to the scheme; TLS 1.3 does.
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
        ),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA512,
            &[alg::RSA_PKCS1_2048_8192_SHA512],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA384,
            &[alg::RSA_PKCS1_2048_8192_SHA384],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[alg::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

/// The operating system's random numbers, through *ring*.
#[derive(Debug)]
struct SystemRandom;

impl SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
            .map_err(|_| GetRandomFailed)
    }
}

/// Client keys (kubeconfig `client-key-data`): RSA or ECDSA P-256/P-384.
#[derive(Debug)]
struct RsaOrEcdsaKeys;

impl KeyProvider for RsaOrEcdsaKeys {
    fn load_private_key(
        &self,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        if let Ok(rsa) = RsaSigningKey::new(&key) {
            return Ok(Arc::new(rsa));
        }
        any_ecdsa_type(&key).map_err(|_| {
            rustls::Error::General(
                "the client key is neither RSA nor ECDSA P-256/P-384 (Ed25519 client keys are \
                 not supported)"
                    .into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_is_consistent_and_has_no_x25519_chacha_or_ed25519() {
        let p = provider();
        assert!(!p.cipher_suites.is_empty() && !p.kx_groups.is_empty());
        assert!(p
            .kx_groups
            .iter()
            .all(|g| g.name() != rustls::NamedGroup::X25519));
        assert!(p
            .cipher_suites
            .iter()
            .all(|s| !format!("{:?}", s.suite()).contains("CHACHA20")));
        assert!(!SIGNATURES
            .supported_schemes()
            .contains(&SignatureScheme::ED25519));
        let mut bytes = [0u8; 32];
        p.secure_random.fill(&mut bytes).unwrap();
        assert_ne!(bytes, [0u8; 32]);
    }

    /// Throwaway keys made with `openssl genpkey` for this test only.
    fn key(pem: &str) -> PrivateKeyDer<'static> {
        use rustls_pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn client_keys_rsa_and_ecdsa_load_and_ed25519_is_named() {
        let keys = provider().key_provider;
        let rsa = keys
            .load_private_key(key(include_str!("testdata/rsa-2048-test-key.pem")))
            .unwrap();
        assert_eq!(rsa.algorithm(), rustls::SignatureAlgorithm::RSA);
        let ecdsa = rcgen::KeyPair::generate().unwrap();
        let ecdsa = keys.load_private_key(key(&ecdsa.serialize_pem())).unwrap();
        assert_eq!(ecdsa.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        let ed = keys.load_private_key(key(include_str!("testdata/ed25519-test-key.pem")));
        let message = ed.expect_err("Ed25519 is left out").to_string();
        assert!(
            message.contains("Ed25519 client keys are not supported"),
            "{message}"
        );
    }
}
