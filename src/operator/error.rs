//! The operator's error type: one enum for everything a reconcile can hit. Reconcilers never
//! panic on it; the controllers requeue with backoff and surface it in a condition.

use kube::runtime::finalizer;

use super::desired::DesiredError;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    /// One or more registry pods failed; `message` joins each pod's error (one source cannot
    /// stand for several).
    #[error("registry pod {pod}: {message}")]
    Registry { pod: String, message: String },
    /// The spec passed the schema but cannot be acted on (a bad regex, an unknown time zone).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<OperatorError>>),
    /// The operator process cannot start (its listener, its HTTP client).
    #[error("cannot start the operator: {0}")]
    Startup(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("lost the leader lease; exiting so a fresh process rejoins the election")]
    LostLeadership,
    /// `operator teardown`: what it deleted did not go in time.
    #[error("{0}")]
    Stuck(String),
}

impl OperatorError {
    /// A closed label value for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorError::Kube(_) => "kube",
            OperatorError::Desired(_) => "desired",
            OperatorError::Registry { .. } => "registry",
            OperatorError::InvalidSpec(_) => "invalid_spec",
            OperatorError::MissingField(_) => "missing_field",
            OperatorError::Finalizer(_) => "finalizer",
            OperatorError::Startup(_) => "startup",
            OperatorError::LostLeadership => "lost_leadership",
            OperatorError::Stuck(_) => "stuck",
        }
    }

    /// A CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            OperatorError::Kube(_) => "KubernetesAPIError",
            OperatorError::Desired(_) => "InvalidSpec",
            OperatorError::Registry { .. } => "RegistryUnreachable",
            OperatorError::InvalidSpec(_) => "InvalidSpec",
            OperatorError::MissingField(_) => "MissingField",
            OperatorError::Finalizer(_) => "FinalizerFailed",
            OperatorError::Startup(_) => "StartupFailed",
            OperatorError::LostLeadership => "LostLeadership",
            OperatorError::Stuck(_) => "Stuck",
        }
    }
}

impl From<finalizer::Error<OperatorError>> for OperatorError {
    fn from(e: finalizer::Error<OperatorError>) -> Self {
        OperatorError::Finalizer(Box::new(e))
    }
}
