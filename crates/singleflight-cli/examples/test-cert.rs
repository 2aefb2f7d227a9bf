//! Writes a throwaway CA and a certificate it signed for `127.0.0.1` and
//! `localhost` into a directory, as PEM: `ca.pem`, `cert.pem`, `key.pem`.
//! For benchmarks and trials of `--tls-cert`/`--tls-key` and
//! `--upstream-ca` on this machine; never for a real deployment.
//!
//! `cargo run -p oneflight-cli --example test-cert -- DIR`

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: test-cert DIR (writes DIR/ca.pem, DIR/cert.pem, DIR/key.pem)")?,
    );
    std::fs::create_dir_all(&dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "singleflight throwaway CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.as_ref().pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    println!("{}", dir.display());
    Ok(())
}
