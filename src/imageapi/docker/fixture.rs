//! A small cache for the unit tests: two tagged images, a multi-platform index and a dangling
//! manifest, as a store snapshot.

use std::collections::HashMap;

use crate::digest::Digest;
use crate::reference::RepoPath;
use crate::store::{
    BlobRef, ChildRef, ManifestRecord, OCI_INDEX, OCI_MANIFEST, Platform, SmallSet, Snapshot,
    StrMap,
};

pub fn digest(prefix: &str) -> Digest {
    format!("sha256:{prefix:0<64}").parse().unwrap()
}

pub fn repo(r: &str, p: &str) -> RepoPath {
    RepoPath {
        registry: r.into(),
        repository: p.into(),
    }
}

pub fn platform(arch: &str) -> Platform {
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: None,
    }
}

fn blob(prefix: &str, size: u64) -> BlobRef {
    BlobRef {
        digest: digest(prefix),
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    }
}

/// A platform manifest: config `<p>c`, layers `<p>1`, `<p>2`.
fn manifest(
    p: &str,
    reference: &RepoPath,
    created: &str,
    labels: &[(&str, &str)],
) -> ManifestRecord {
    ManifestRecord {
        digest: digest(p),
        media_type: OCI_MANIFEST.into(),
        size: 100,
        references: SmallSet::from([reference.clone()]),
        created: "2025-01-01T00:00:00Z".parse().unwrap(),
        last_pulled: None,
        pull_count: 0,
        config: Some(BlobRef {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            ..blob(&format!("{p}c"), 10)
        }),
        layers: vec![blob(&format!("{p}1"), 1000), blob(&format!("{p}2"), 2000)].into(),
        children: Box::new([]),
        subject: None,
        artifact_type: None,
        annotations: StrMap::new(),
        platform: Some(platform("amd64")),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        image_created: Some(created.into()),
    }
}

pub struct Fixture {
    pub nginx: Digest,
    pub app: Digest,
    pub multi: Digest,
    pub amd64: Digest,
    pub arm64: Digest,
    pub dangling: Digest,
}

pub fn fixture() -> (Snapshot, Fixture) {
    let nginx_repo = repo("docker.io", "library/nginx");
    let app_repo = repo("upstream.test", "team/app");
    let multi_repo = repo("quay.io", "org/multi");
    let nginx = manifest("aa1", &nginx_repo, "2024-01-02T00:00:00Z", &[("team", "a")]);
    let app = manifest("bb1", &app_repo, "2024-01-03T00:00:00Z", &[("team", "b")]);
    let dangling = manifest("aa2", &nginx_repo, "2023-06-01T00:00:00Z", &[]);
    let mut amd64 = manifest(
        "cc1",
        &multi_repo,
        "2024-01-04T00:00:00Z",
        &[("arch", "x86")],
    );
    // The arm64 manifest shares amd64's second layer.
    let mut arm64 = manifest(
        "cc2",
        &multi_repo,
        "2024-01-04T00:00:00Z",
        &[("arch", "arm")],
    );
    arm64.platform = Some(platform("arm64"));
    arm64.layers[1] = amd64.layers[1].clone();
    amd64.platform = Some(platform("amd64"));
    let attestation = ChildRef {
        digest: digest("cc3"),
        size: 50,
        media_type: OCI_MANIFEST.into(),
        platform: Some(Platform {
            os: "unknown".into(),
            architecture: "unknown".into(),
            variant: None,
        }),
    };
    let child = |r: &ManifestRecord| ChildRef {
        digest: r.digest.clone(),
        size: r.size,
        media_type: r.media_type.clone(),
        platform: r.platform.clone(),
    };
    let multi = ManifestRecord {
        digest: digest("dd1"),
        media_type: OCI_INDEX.into(),
        size: 300,
        references: SmallSet::from([multi_repo.clone()]),
        config: None,
        layers: Box::new([]),
        children: vec![child(&arm64), child(&amd64), attestation].into(),
        platform: None,
        labels: StrMap::new(),
        image_created: None,
        ..amd64.clone()
    };
    let ids = Fixture {
        nginx: nginx.digest.clone(),
        app: app.digest.clone(),
        multi: multi.digest.clone(),
        amd64: amd64.digest.clone(),
        arm64: arm64.digest.clone(),
        dangling: dangling.digest.clone(),
    };
    let manifests = vec![
        (
            nginx.clone(),
            vec![
                (nginx_repo.clone(), "1.27".to_owned()),
                (nginx_repo.clone(), "latest".to_owned()),
                (app_repo.clone(), "nginx".to_owned()),
            ],
        ),
        (app.clone(), vec![(app_repo, "1".to_owned())]),
        (multi.clone(), vec![(multi_repo, "v1".to_owned())]),
        (amd64.clone(), Vec::new()),
        (arm64.clone(), Vec::new()),
        (dangling.clone(), Vec::new()),
    ];
    let mut blobs = HashMap::new();
    for (r, _) in &manifests {
        // Everything is cached but the arm64 layers.
        for d in r.blob_digests() {
            if r.digest != arm64.digest || d == &arm64.digest {
                let size = if d == &r.digest {
                    r.size
                } else {
                    r.layers
                        .iter()
                        .chain(r.config.iter())
                        .find(|b| &b.digest == d)
                        .map_or(0, |b| b.size)
                };
                blobs.insert(d.clone(), size);
            }
        }
    }
    (
        Snapshot {
            revision: 1,
            manifests: manifests.into_iter().map(|(r, t)| (r.into(), t)).collect(),
            blobs: std::sync::Arc::new(blobs.into()),
        },
        ids,
    )
}
