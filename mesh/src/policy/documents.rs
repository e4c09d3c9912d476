//! Loading security policy from manifest files: multi-document YAML (`---`), each document
//! dispatched by `kind`. Documents of other kinds are skipped (they belong to other loaders);
//! invalid policy documents are all reported, each with its document number.

use super::{AuthorizationPolicy, PeerAuthentication, ValidationError, authz, peer_auth};

/// The policies found in a set of documents, with their warnings.
#[derive(Clone, Debug, Default)]
pub struct PolicyDocuments {
    /// `AuthorizationPolicy` documents.
    pub authorization: Vec<AuthorizationPolicy>,
    /// `PeerAuthentication` documents.
    pub peer_authentication: Vec<PeerAuthentication>,
    /// Warnings (unknown fields, AUDIT), prefixed with the object they concern.
    pub warnings: Vec<String>,
}

/// A policy document refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("document {index}: {error}")]
pub struct DocumentError {
    /// 1-based position of the document in the text.
    pub index: usize,
    /// What is wrong with it.
    #[source]
    pub error: ValidationError,
}

/// The `kind` of one document, if it has one.
pub fn kind_of(doc: &str) -> Option<String> {
    let value: serde_yaml::Value = serde_yaml::from_str(doc).ok()?;
    value.get("kind")?.as_str().map(str::to_owned)
}

impl PolicyDocuments {
    /// Parses every policy document of `text`; refuses the whole set when any policy
    /// document is invalid (a partial security policy is worse than none applied).
    pub fn parse(text: &str) -> Result<Self, Vec<DocumentError>> {
        let mut out = Self::default();
        let mut errors = Vec::new();
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            let index = i + 1;
            let kind = kind_of(doc);
            let result = match kind.as_deref() {
                Some(authz::KIND) => AuthorizationPolicy::from_yaml(doc).map(|(p, w)| {
                    let key = p.key();
                    out.warnings
                        .extend(w.into_iter().map(|w| format!("{key}: {w}")));
                    out.authorization.push(p);
                }),
                Some(peer_auth::KIND) => PeerAuthentication::from_yaml(doc).map(|(p, w)| {
                    let key = p.key();
                    out.warnings
                        .extend(w.into_iter().map(|w| format!("{key}: {w}")));
                    out.peer_authentication.push(p);
                }),
                _ => Ok(()),
            };
            if let Err(error) = result {
                errors.push(DocumentError { index, error });
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// Separates the policy documents (`AuthorizationPolicy`, `PeerAuthentication`) of a
/// manifest text from the rest: `(policies, others)`, each re-joined with `---`. How a
/// manifest folder holding both Knative objects and Istio policies is split between loaders.
pub fn partition(text: &str) -> (String, String) {
    let (mut policies, mut others) = (Vec::new(), Vec::new());
    for doc in split_documents(text) {
        match kind_of(doc).as_deref() {
            Some(authz::KIND | peer_auth::KIND) => policies.push(doc),
            _ => others.push(doc),
        }
    }
    let join = |docs: Vec<&str>| {
        docs.iter()
            .map(|d| d.trim_end_matches('\n'))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    (join(policies), join(others))
}

/// Splits on `---` separator lines, dropping empty documents.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_separates_policies_from_other_objects() {
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: iris}\n";
        let (policies, others) = partition(text);
        assert_eq!(
            PolicyDocuments::parse(&policies)
                .unwrap()
                .authorization
                .len(),
            1
        );
        assert!(others.contains("kind: Service") && !others.contains("AuthorizationPolicy"));
        assert_eq!(partition("kind: Service\n").0, "");
    }

    #[test]
    fn dispatches_by_kind_and_skips_others() {
        let text = "# security\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default, extra: 1}\nspec: {}\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: iris}\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: default}\nspec: {mtls: {mode: STRICT}}\n";
        let docs = PolicyDocuments::parse(text).unwrap();
        assert_eq!(docs.authorization.len(), 1);
        assert_eq!(docs.peer_authentication.len(), 1);
        assert_eq!(
            docs.warnings,
            ["AuthorizationPolicy/default/a: metadata.extra: unknown field, kept but not acted on"]
        );
    }

    #[test]
    fn reports_every_invalid_document_with_its_index() {
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ok}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad}\nspec: {action: MAYBE}\n---\napiVersion: security.istio.io/v9\nkind: PeerAuthentication\nmetadata: {name: p}\n";
        let errors = PolicyDocuments::parse(text).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].index, 2);
        assert_eq!(errors[0].error.errors[0].path, "spec.action");
        assert_eq!(errors[1].index, 3);
        assert_eq!(errors[1].error.errors[0].path, "apiVersion");
        assert!(
            errors[1]
                .to_string()
                .starts_with("document 3: PeerAuthentication is invalid: apiVersion")
        );
    }
}
