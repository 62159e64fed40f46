//! A throwaway PKI made with the openssl command line: CAs and the certificates they sign.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::cleanup;
use super::secs;
use super::tempdir::TestDir;
use super::tools::run_cmd;

/// CAs and leaf certificates in one temp dir, named `NAME.crt` / `NAME.key`.
pub struct Pki {
    dir: TestDir,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: TestDir::new("pki"),
        }
    }

    /// One PKI for the whole test binary, removed at exit: `ca` signs `server`
    /// (a certificate for localhost and 127.0.0.1); `other` is a CA that signed
    /// nothing anyone presents.
    pub fn shared() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let pki = Pki::new();
            pki.ca("ca");
            pki.ca("other");
            pki.leaf("ca", "server");
            cleanup::at_exit(|| {
                if let Some(pki) = PKI.get() {
                    pki.dir.remove();
                }
            });
            pki
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(self.dir.path());
        let out = run_cmd(cmd, None, secs(30));
        assert!(out.success(), "openssl {args:?}:\n{out}");
    }

    /// `NAME.crt` and `NAME.key`.
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        )
    }

    /// `openssl req` making a new P-256 key `NAME.key`, with `args` after it.
    fn new_key(&self, name: &str, args: &[&str]) {
        let key = format!("{name}.key");
        let mut all = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
        ];
        all.extend_from_slice(args);
        self.openssl(&all);
    }

    /// `NAME.crt` and `NAME.key`: a self-signed CA.
    pub fn ca(&self, name: &str) -> PathBuf {
        self.new_key(
            name,
            &[
                "-x509",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "3",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        self.path(&format!("{name}.crt"))
    }

    /// `NAME.crt` and `NAME.key` for DNS:localhost and IP:127.0.0.1, signed by CA `ca`.
    pub fn leaf(&self, ca: &str, name: &str) -> (PathBuf, PathBuf) {
        self.leaf_with_cn(ca, name, "localhost")
    }

    /// Like [`Pki::leaf`], with subject CN `cn` (a client certificate for user `cn`).
    pub fn leaf_with_cn(&self, ca: &str, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        self.leaf_days(ca, name, cn, "3")
    }

    /// Like [`Pki::leaf_with_cn`], valid for `days` days from now; "0" expires
    /// within the second it was made in.
    pub fn leaf_days(&self, ca: &str, name: &str, cn: &str, days: &str) -> (PathBuf, PathBuf) {
        self.new_key(
            name,
            &[
                "-new",
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
            ],
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            days,
            "-copy_extensions",
            "copy",
        ]);
        self.pair(name)
    }
}
