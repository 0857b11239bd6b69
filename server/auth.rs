//! Who may run commands: bearer tokens from `--tokens-file` and client
//! certificates (mTLS). It runs as a tonic interceptor, so a request without
//! valid credentials is refused from its headers, before its body is read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::audit::Audit;
use crate::connections::Connections;

/// Shortest token accepted: anything shorter is within reach of guessing.
pub const MIN_TOKEN_LEN: usize = 16;

/// The authenticated name of a caller, left in the request's extensions for
/// `ExecService::admit` and the audit line.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

struct TokenEntry {
    name: String,
    token: Vec<u8>,
}

/// The `NAME TOKEN` lines of a tokens file.
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl Tokens {
    /// Reads a tokens file; refuses one that group or others can access, as
    /// ssh refuses a private key that others can read.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{shown} is accessible by group or others (mode {mode:04o}); \
                 tokens must stay private: chmod 600 {shown}"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        Tokens::parse(&text).map_err(|e| format!("{shown}: {e}"))
    }

    /// Parses `NAME TOKEN` lines; `#` comments and blank lines are skipped.
    /// Errors name the line, never its text: it may hold a token.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, token] = fields[..] else {
                return Err(format!(
                    "line {number}: expected NAME TOKEN (two words), found {} words",
                    fields.len()
                ));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {number}: the token for {name} is shorter than {MIN_TOKEN_LEN} characters \
                     (e.g. `openssl rand -hex 32` makes a good one)"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {number}: the token for {name} must be printable ASCII (it travels in a header)"
                ));
            }
            if entries.iter().any(|e| e.name == name) {
                return Err(format!("line {number}: name {name} appears twice"));
            }
            if entries.iter().any(|e| e.token == token.as_bytes()) {
                return Err(format!(
                    "line {number}: the token for {name} is also another name's token"
                ));
            }
            entries.push(TokenEntry {
                name: name.to_string(),
                token: token.as_bytes().to_vec(),
            });
        }
        if entries.is_empty() {
            return Err("no tokens in the file (expected lines of NAME TOKEN)".into());
        }
        Ok(Tokens { entries })
    }

    /// The name whose token is `presented`. Every entry is compared, each in
    /// constant time, so timing tells neither which entry matched nor how much.
    pub fn verify(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for entry in &self.entries {
            let matched: bool = entry.token.ct_eq(presented).into();
            if matched {
                found = Some(entry.name.as_str());
            }
        }
        found
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// What `newer` changes: names added, names removed, names whose token
    /// changed, each sorted. For the reload log line; never the tokens.
    pub fn changes_to(&self, newer: &Tokens) -> TokenChanges {
        let token_of = |tokens: &Tokens, name: &str| {
            tokens
                .entries
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.token.clone())
        };
        let mut changes = TokenChanges::default();
        for entry in &newer.entries {
            match token_of(self, &entry.name) {
                None => changes.added.push(entry.name.clone()),
                Some(token) if token != entry.token => changes.changed.push(entry.name.clone()),
                Some(_) => {}
            }
        }
        for entry in &self.entries {
            if token_of(newer, &entry.name).is_none() {
                changes.removed.push(entry.name.clone());
            }
        }
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        changes
    }

    /// The local token alone, under the name `principal` (`local:USER`).
    pub fn local(principal: String, token: String) -> Tokens {
        Tokens {
            entries: vec![TokenEntry {
                name: principal,
                token: token.into_bytes(),
            }],
        }
    }
}

/// Names added, removed and given a new token by a reload.
#[derive(Debug, Default, PartialEq)]
pub struct TokenChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// The token set in force, shared by every connection's authenticator and
/// replaced whole by a SIGHUP reload: a call checks the set current when its
/// headers arrive, so a running exec is never cut by a reload.
#[derive(Clone)]
pub struct SharedTokens(Arc<RwLock<Arc<Tokens>>>);

impl SharedTokens {
    pub fn new(tokens: Tokens) -> Self {
        SharedTokens(Arc::new(RwLock::new(Arc::new(tokens))))
    }

    pub fn current(&self) -> Arc<Tokens> {
        // A poisoned lock still holds a whole set: replace() only swaps an Arc.
        match self.0.read() {
            Ok(tokens) => tokens.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, tokens: Tokens) {
        let mut slot = match self.0.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(tokens);
    }
}

/// What rexecd requires of a caller, decided at start.
pub struct Credentials {
    pub tokens: Option<SharedTokens>,
    /// The TLS layer requires a verified client certificate (mTLS), whose
    /// name is the principal unless a token names one.
    pub client_certs: bool,
    /// `tokens` is the default local token, not a `--tokens-file`.
    pub local: bool,
}

/// Checks each request's credentials, records its principal, and audits
/// a refusal.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Option<SharedTokens>,
    client_certs: bool,
    local: bool,
    audit: Audit,
    connections: Connections,
}

impl Authenticator {
    pub fn new(credentials: Credentials, audit: Audit, connections: Connections) -> Self {
        Authenticator {
            tokens: credentials.tokens,
            client_certs: credentials.client_certs,
            local: credentials.local,
            audit,
            connections,
        }
    }

    /// The principal, or the refusal with the principal known so far.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<String, (Status, Option<String>)> {
        let cert_name = if self.client_certs {
            Some(certificate_principal(request).map_err(|status| (status, None))?)
        } else {
            None
        };
        if let Some(tokens) = &self.tokens {
            let refused = |status| (status, cert_name.clone());
            let token = bearer_token(request, self.local).map_err(refused)?;
            return self.verify(tokens, token).map_err(refused);
        }
        Ok(cert_name.unwrap_or_else(|| "anonymous".into()))
    }

    fn verify(&self, tokens: &SharedTokens, token: &str) -> Result<String, Status> {
        tokens
            .current()
            .verify(token.as_bytes())
            .map(str::to_string)
            .ok_or_else(|| {
                Status::unauthenticated(if self.local {
                    "invalid token: not the local token of the user who started this rexecd"
                } else {
                    "invalid token"
                })
            })
    }

    /// The principal of a request that carries its token in the message
    /// (NATS): the same tokens as gRPC. A rexecd that requires client
    /// certificates refuses, since no certificate comes with a NATS message.
    pub fn principal_of_token(&self, token: &str) -> Result<String, Status> {
        if self.client_certs {
            return Err(Status::unauthenticated(
                "this rexecd requires a client certificate (mTLS), which a NATS message \
                 cannot carry: run it with --tokens-file and without --tls-client-ca to serve NATS",
            ));
        }
        match &self.tokens {
            Some(_) if token.is_empty() => Err(Status::unauthenticated(
                "missing credentials: set the request's token (rexec --token-file or REXEC_TOKEN)",
            )),
            Some(tokens) => self.verify(tokens, token),
            None => Ok("anonymous".into()),
        }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.authenticate(&request) {
            Ok(name) => {
                self.connections.authenticated(request.remote_addr());
                request.extensions_mut().insert(Principal(name));
                Ok(request)
            }
            Err((status, principal)) => {
                let peer = request
                    .remote_addr()
                    .map_or_else(|| "unknown".into(), |a| a.to_string());
                tracing::debug!(%peer, "refused: {}", status.message());
                let principal = principal.as_deref().unwrap_or("unauthenticated");
                self.audit.refused(&peer, principal, "grpc", &status);
                Err(status)
            }
        }
    }
}

/// The token of `authorization: Bearer TOKEN`.
fn bearer_token<T>(request: &Request<T>, local: bool) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(if local {
            "missing credentials: this rexecd runs commands only for the user who started it; \
             send `authorization: Bearer TOKEN` with the token in that user's \
             ~/.local/state/rexec/token (rexec sends it by itself to loopback addresses)"
        } else {
            "missing credentials: send `authorization: Bearer TOKEN` (rexec --token-file or REXEC_TOKEN)"
        })
    };
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Status::unauthenticated(
            "unsupported authorization scheme: use Bearer",
        ));
    }
    Ok(token.trim())
}

/// The name in the verified client certificate: subject CN, else first SAN.
fn certificate_principal<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    principal_from_der(leaf.as_ref()).ok_or_else(|| {
        Status::permission_denied("the client certificate names no subject CN or SAN")
    })
}

/// Subject common name, else the first DNS, email or URI subject alternative name.
pub fn principal_from_der(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().filter(|s| !s.is_empty()).map(String::from));
    if common_name.is_some() {
        return common_name;
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => {
            Some((*n).to_string())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn tokens_file_skips_comments_and_blank_lines() {
        let tokens = Tokens::parse(&format!("# ops\n\nalice {A}\n  bob\t{B}  \n")).unwrap();
        assert_eq!(tokens.count(), 2);
        assert_eq!(tokens.verify(A.as_bytes()), Some("alice"));
        assert_eq!(tokens.verify(B.as_bytes()), Some("bob"));
        assert_eq!(tokens.verify(b"aaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(tokens.verify(b""), None);
        assert_eq!(tokens.verify(&A.as_bytes()[..10]), None);
    }

    #[test]
    fn bad_lines_name_the_line_but_not_the_token() {
        let error = Tokens::parse(&format!("alice {A}\nbob {B} extra\n"))
            .err()
            .unwrap();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains(B), "{error}");
        let error = Tokens::parse("carol tiny42\n").err().unwrap();
        assert!(error.contains("shorter than 16"), "{error}");
        assert!(!error.contains("tiny42"), "{error}");
        assert!(Tokens::parse("# nothing\n").is_err());
        assert!(Tokens::parse(&format!("a {A}\na {B}\n")).is_err());
        assert!(Tokens::parse(&format!("a {A}\nb {A}\n")).is_err());
    }

    #[test]
    fn changes_name_added_removed_and_changed_tokens() {
        const C: &str = "cccccccccccccccccccc";
        let old = Tokens::parse(&format!("alice {A}\nbob {B}\n")).unwrap();
        let new = Tokens::parse(&format!("carol {A}\nbob {C}\n")).unwrap();
        let changes = old.changes_to(&new);
        assert_eq!(changes.added, ["carol"]);
        assert_eq!(changes.removed, ["alice"]);
        assert_eq!(changes.changed, ["bob"]);
        assert_eq!(new.changes_to(&new), TokenChanges::default());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut request = Request::new(());
        assert_eq!(
            bearer_token(&request, false).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        request
            .metadata_mut()
            .insert("authorization", format!("bearer {A}").parse().unwrap());
        assert_eq!(bearer_token(&request, false).unwrap(), A);
        request
            .metadata_mut()
            .insert("authorization", format!("Basic {A}").parse().unwrap());
        assert!(bearer_token(&request, false).is_err());
    }
}
