//! The errors of the Docker API, with the status the daemon would answer. Free of HTTP types:
//! the handlers turn them into `{"message": ...}` at the boundary.

use super::filters::FilterError;
use super::names::InvalidName;
use crate::prune::PruneError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("multiple IDs found with provided prefix: {0}")]
    Ambiguous(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("invalid {param}: {message}")]
    Param {
        param: &'static str,
        message: String,
    },
    #[error("image {image} was found but does not provide the specified platform ({platform})")]
    NoPlatform { image: String, platform: String },
    #[error(
        "conflict: unable to delete {0} (must be forced) - image is referenced in multiple repositories"
    )]
    MultipleRepositories(String),
    #[error("conflict: unable to delete {0}: it was pulled while being removed; try again")]
    PulledDuringDelete(String),
    #[error("client version {0} is too new. Maximum supported API version is {max}", max = super::API_VERSION)]
    TooNew(String),
    #[error("client version {0} is too old. Minimum supported API version is {min}, please upgrade your client to a newer version", min = super::MIN_API_VERSION)]
    TooOld(String),
    #[error("page not found")]
    NotFound,
    #[error("the cache index is still loading")]
    Loading,
    #[error(transparent)]
    Prune(#[from] PruneError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl DockerError {
    pub fn status(&self) -> u16 {
        match self {
            DockerError::NoSuchImage(_)
            | DockerError::NoPlatform { .. }
            | DockerError::NotFound => 404,
            DockerError::InvalidName(_)
            | DockerError::Ambiguous(_)
            | DockerError::Filter(_)
            | DockerError::Param { .. }
            | DockerError::TooNew(_)
            | DockerError::TooOld(_)
            | DockerError::Prune(PruneError::Request(_)) => 400,
            DockerError::MultipleRepositories(_) | DockerError::PulledDuringDelete(_) => 409,
            DockerError::Loading => 503,
            DockerError::Prune(PruneError::Store(_))
            | DockerError::Store(_)
            | DockerError::Internal(_) => 500,
        }
    }
}
