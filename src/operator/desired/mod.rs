//! The desired children of an [`ImageCache`], computed from its spec alone (no API calls).
//!
//! Every object carries a controller owner reference to the ImageCache and Helm's recommended
//! labels; the reconciler applies them with server-side apply. Names:
//! `<name>` (StatefulSet, client Service), `<name>-headless`, `<name>-config`,
//! `<name>-admin-token`, `<name>-pdb`, and with node mirroring `<name>-node-config` (a DaemonSet
//! running `imagecache node-config` on every node).
//!
//! Inside a registry pod:
//! - `/etc/imagecache/config.yaml`: the registry config of design section 2 (from the ConfigMap);
//! - `/etc/imagecache/admin/token`: the admin token (the admin listener is on `0.0.0.0:8081`);
//! - `/etc/imagecache/upstreams/<upstream>/.dockerconfigjson` and `.../ca.crt`: an upstream's
//!   credentials and CA bundle, projected from the Secrets its spec names;
//! - `/var/lib/imagecache`: the cache (a volume claim per pod, or an emptyDir).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, HostPathVolumeSource, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, Secret, SecretProjection,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Toleration, Volume,
    VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::crd::{ImageCache, MirrorRuntime, ServiceType, UpstreamSpec};

/// `app.kubernetes.io/name` of everything the operator creates.
pub const APP_NAME: &str = "imagecache";
/// `app.kubernetes.io/component` of a cache's children.
pub const COMPONENT: &str = "registry";
/// `app.kubernetes.io/component` of the node-config DaemonSet and its pods.
pub const NODE_CONFIG_COMPONENT: &str = "node-config";
/// `app.kubernetes.io/name` of the node-config pods. It differs from [`APP_NAME`] because the
/// registry pods' selector (name and instance, immutable) must not match them: the Services,
/// the PodDisruptionBudget and the operator's pod listing would take them for registry pods.
pub const NODE_CONFIG_APP_NAME: &str = "imagecache-node-config";
/// `app.kubernetes.io/managed-by` of a cache's children.
pub const MANAGED_BY: &str = "imagecache-operator";
/// Pod template annotation holding the config hash: a config change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "imagecache.io/config-hash";

/// The key of the registry config in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// The key of the token in the admin token Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// The registry container's name.
pub const CONTAINER_NAME: &str = "registry";

/// Registry listener port (container).
pub const REGISTRY_PORT: i32 = 8080;
/// Admin listener port (container): health, readiness, metrics, `/cmd/*`, the image APIs.
pub const ADMIN_PORT: i32 = 8081;
/// The client Service's port (`<name>.<namespace>.svc:5000`).
pub const CLIENT_SERVICE_PORT: i32 = 5000;

/// Where the config file is mounted.
pub const CONFIG_PATH: &str = "/etc/imagecache/config.yaml";
/// Where the admin token Secret is mounted.
pub const ADMIN_TOKEN_DIR: &str = "/etc/imagecache/admin";
/// Where upstream Secrets are mounted, one directory per upstream.
pub const UPSTREAMS_DIR: &str = "/etc/imagecache/upstreams";
/// The cache directory.
pub const IMAGE_PATH: &str = "/var/lib/imagecache";

/// The cache volume claim size when `storage.size` is unset.
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";
/// `defaultRegistry` when the spec leaves it out.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// `tagTTL` when the spec leaves it out.
pub const DEFAULT_TAG_TTL: &str = "15m";
/// UID and GID the registry runs as (the distroless `nonroot` user).
pub const RUN_AS_USER: i64 = 65532;

const DOCKER_CONFIG_FILE: &str = ".dockerconfigjson";
const CA_FILE: &str = "ca.crt";

/// Why a desired object cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("the ImageCache has no metadata.{0}")]
    MissingMetadata(&'static str),
    #[error("cannot render the registry config: {0}")]
    Yaml(#[source] serde_saphyr::ser::Error),
}

/// Name of the StatefulSet and of the client Service.
pub fn statefulset_name(ic: &ImageCache) -> Result<String, DesiredError> {
    name(ic)
}

/// Name of the headless Service (the StatefulSet's `serviceName`).
pub fn headless_service_name(ic: &ImageCache) -> Result<String, DesiredError> {
    Ok(format!("{}-headless", name(ic)?))
}

/// Name of the ConfigMap holding `config.yaml`.
pub fn config_map_name(ic: &ImageCache) -> Result<String, DesiredError> {
    Ok(format!("{}-config", name(ic)?))
}

/// Name of the admin token Secret.
pub fn admin_token_secret_name(ic: &ImageCache) -> Result<String, DesiredError> {
    Ok(format!("{}-admin-token", name(ic)?))
}

/// Name of the PodDisruptionBudget.
pub fn pdb_name(ic: &ImageCache) -> Result<String, DesiredError> {
    Ok(format!("{}-pdb", name(ic)?))
}

/// Name of the node-config DaemonSet.
pub fn node_config_name(ic: &ImageCache) -> Result<String, DesiredError> {
    Ok(format!("{}-node-config", name(ic)?))
}

/// The labels that select a cache's pods (stable across versions: never change them). The
/// component keeps an ImageCache named like a Helm release of the chart from selecting the
/// operator's own pods.
pub fn selector_labels(ic: &ImageCache) -> Result<BTreeMap<String, String>, DesiredError> {
    Ok(BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name(ic)?),
        (
            "app.kubernetes.io/component".to_owned(),
            COMPONENT.to_owned(),
        ),
    ]))
}

/// Helm's recommended labels, put on every child and on the pods.
pub fn labels(ic: &ImageCache) -> Result<BTreeMap<String, String>, DesiredError> {
    let mut labels = selector_labels(ic)?;
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        COMPONENT.to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGED_BY.to_owned(),
    );
    Ok(labels)
}

/// The controller owner reference to the ImageCache.
pub fn owner_reference(ic: &ImageCache) -> Result<OwnerReference, DesiredError> {
    Ok(OwnerReference {
        api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        kind: "ImageCache".to_owned(),
        name: name(ic)?,
        uid: ic
            .metadata
            .uid
            .clone()
            .ok_or(DesiredError::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The DNS name the replicas of a cache with more than one replica find each other by: the
/// headless Service, which lists only ready pods (`<name>-headless.<namespace>.svc`). `None`
/// for a single replica.
pub fn peer_discovery_name(ic: &ImageCache) -> Result<Option<String>, DesiredError> {
    if ic.spec.replicas <= 1 {
        return Ok(None);
    }
    let namespace = ic
        .metadata
        .namespace
        .as_deref()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    Ok(Some(format!(
        "{}.{namespace}.svc",
        headless_service_name(ic)?
    )))
}

/// The registry config file (design section 2) the pods run with, as YAML.
pub fn config_yaml(ic: &ImageCache) -> Result<String, DesiredError> {
    let spec = &ic.spec;
    let file = ConfigFile {
        addr: "0.0.0.0:8080",
        admin_addr: "0.0.0.0:8081",
        admin_token_file: format!("{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"),
        image_path: IMAGE_PATH,
        default_registry: spec.default_registry.as_deref().unwrap_or(DEFAULT_REGISTRY),
        tag_ttl: spec.tag_ttl.as_deref().unwrap_or(DEFAULT_TAG_TTL),
        air_gapped: spec.air_gapped,
        registries: spec.upstreams.iter().map(registry_entry).collect(),
        peer_discovery: peer_discovery_name(ic)?.map(|name| PeerDiscoveryEntry { name }),
        preload: spec.preload.as_ref().filter(|p| !p.images.is_empty()),
    };
    serde_saphyr::to_string(&file).map_err(DesiredError::Yaml)
}

/// A hash of the config, for [`CONFIG_HASH_ANNOTATION`] (hex SHA-256).
pub fn config_hash(config_yaml: &str) -> String {
    hex::encode(Sha256::digest(config_yaml.as_bytes()))
}

/// The ConfigMap with `config.yaml`.
pub fn config_map(ic: &ImageCache) -> Result<ConfigMap, DesiredError> {
    Ok(ConfigMap {
        metadata: metadata(ic, config_map_name(ic)?)?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config_yaml(ic)?)])),
        ..ConfigMap::default()
    })
}

/// The admin token Secret (`token`), read by the pods and by the operator.
pub fn admin_token_secret(ic: &ImageCache, token: &str) -> Result<Secret, DesiredError> {
    Ok(Secret {
        metadata: metadata(ic, admin_token_secret_name(ic)?)?,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            ADMIN_TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The headless Service giving each registry pod a stable DNS name (registry and admin ports).
/// It lists only ready pods: the replicas find each other in it (`peerDiscovery`), and a pod
/// that is not ready must not own content. The operator reaches pods by their IPs, not by it.
pub fn headless_service(ic: &ImageCache) -> Result<Service, DesiredError> {
    Ok(Service {
        metadata: metadata(ic, headless_service_name(ic)?)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(ic)?),
            ports: Some(vec![
                service_port("registry", REGISTRY_PORT, "registry", None),
                service_port("admin", ADMIN_PORT, "admin", None),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The client Service nodes and clients pull from (`<name>.<namespace>.svc:5000`). Each client
/// (a node's container runtime, by its address) keeps to one registry pod (`ClientIP`
/// affinity): what it pulled once is in that pod's cache when it pulls it again.
pub fn client_service(ic: &ImageCache) -> Result<Service, DesiredError> {
    let service = ic.spec.service.clone().unwrap_or_default();
    let (type_, node_port) = match service.type_ {
        ServiceType::ClusterIP => ("ClusterIP", None),
        ServiceType::NodePort => ("NodePort", service.node_port),
    };
    Ok(Service {
        metadata: metadata(ic, name(ic)?)?,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector_labels(ic)?),
            session_affinity: Some("ClientIP".to_owned()),
            ports: Some(vec![service_port(
                "registry",
                CLIENT_SERVICE_PORT,
                "registry",
                node_port,
            )]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The PodDisruptionBudget: at least one pod stays up when there are several; a single pod may
/// be evicted (a drain must not hang on a one-replica cache).
pub fn pod_disruption_budget(ic: &ImageCache) -> Result<PodDisruptionBudget, DesiredError> {
    let (min_available, max_unavailable) = if ic.spec.replicas > 1 {
        (Some(IntOrString::Int(1)), None)
    } else {
        (None, Some(IntOrString::Int(1)))
    };
    Ok(PodDisruptionBudget {
        metadata: metadata(ic, pdb_name(ic)?)?,
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(ic)?),
                ..LabelSelector::default()
            }),
            min_available,
            max_unavailable,
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The StatefulSet of registry pods running `image`; `config_hash` (see [`config_hash`]) goes on
/// the pod template so a config change rolls the pods.
pub fn statefulset(
    ic: &ImageCache,
    image: &str,
    config_hash: &str,
) -> Result<StatefulSet, DesiredError> {
    let spec = &ic.spec;
    let storage = spec.storage.clone().unwrap_or_default();
    let scheduling = spec.scheduling.clone().unwrap_or_default();

    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(ic)?,
                items: Some(vec![key_to_path(CONFIG_KEY, CONFIG_KEY)]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "admin-token".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(admin_token_secret_name(ic)?),
                items: Some(vec![key_to_path(ADMIN_TOKEN_KEY, ADMIN_TOKEN_KEY)]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_PATH.to_owned(),
            sub_path: Some(CONFIG_KEY.to_owned()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "admin-token".to_owned(),
            mount_path: ADMIN_TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "data".to_owned(),
            mount_path: IMAGE_PATH.to_owned(),
            ..VolumeMount::default()
        },
    ];
    for (i, upstream) in spec.upstreams.iter().enumerate() {
        let Some(projection) = upstream_projection(upstream) else {
            continue;
        };
        let volume = format!("upstream-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            projected: Some(projection),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: upstream_dir(upstream),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let volume_claim_templates = if storage.empty_dir {
        volumes.push(Volume {
            name: "data".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        None
    } else {
        let size = storage
            .size
            .clone()
            .unwrap_or_else(|| Quantity(DEFAULT_STORAGE_SIZE.to_owned()));
        Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_owned()),
                labels: Some(selector_labels(ic)?),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_owned(), size)])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }])
    };

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec!["imagecache".to_owned()]),
        args: Some(vec![
            "serve".to_owned(),
            "--config".to_owned(),
            CONFIG_PATH.to_owned(),
        ]),
        ports: Some(vec![
            container_port("registry", REGISTRY_PORT),
            container_port("admin", ADMIN_PORT),
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: non_empty_map(scheduling.node_selector),
        tolerations: non_empty_vec(scheduling.tolerations),
        affinity: scheduling.affinity,
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };

    Ok(StatefulSet {
        metadata: metadata(ic, statefulset_name(ic)?)?,
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless_service_name(ic)?),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(ic)?),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(ic)?),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates,
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

/// The host directory the node-config pods write: `nodeMirror.hostsDir`, else the runtime's
/// default.
pub fn node_config_hosts_dir(ic: &ImageCache) -> String {
    let mirror = ic.spec.node_mirror.clone().unwrap_or_default();
    mirror
        .hosts_dir
        .unwrap_or_else(|| node_runtime(ic).default_dir().display().to_string())
}

/// The runtime `imagecache node-config` writes for (its `--runtime`).
fn node_runtime(ic: &ImageCache) -> crate::nodeconfig::Runtime {
    use crate::nodeconfig::Runtime;
    match ic.spec.node_mirror.as_ref().map(|m| m.runtime) {
        Some(MirrorRuntime::Crio) => Runtime::Crio,
        Some(MirrorRuntime::Containerd) | None => Runtime::Containerd,
    }
}

/// The registries the nodes pull through the cache: `nodeMirror.registries`, else every upstream,
/// else (no upstreams: the default allowlist is served) the default registry. In order, once each.
pub fn node_config_registries(ic: &ImageCache) -> Vec<String> {
    let spec = &ic.spec;
    let chosen: Vec<&str> = match spec.node_mirror.as_ref().map(|m| &m.registries) {
        Some(r) if !r.is_empty() => r.iter().map(String::as_str).collect(),
        _ if !spec.upstreams.is_empty() => spec.upstreams.iter().map(|u| u.name.as_str()).collect(),
        _ => vec![spec.default_registry.as_deref().unwrap_or(DEFAULT_REGISTRY)],
    };
    let mut out: Vec<String> = Vec::with_capacity(chosen.len());
    for r in chosen {
        if !out.iter().any(|o| o == r) {
            out.push(r.to_owned());
        }
    }
    out
}

/// The URL node runtimes pull from, given the client Service as applied (the API server fills in
/// its ClusterIP and any allocated node port): `http://127.0.0.1:<nodePort>` for a NodePort
/// Service with its port known (each node reaches its own NodePort), else
/// `http://<ClusterIP>:5000`; `None` while the Service has no ClusterIP yet.
pub fn node_mirror_url(ic: &ImageCache, client_service: &Service) -> Option<String> {
    let spec = client_service.spec.as_ref()?;
    let wants_node_port = ic
        .spec
        .service
        .as_ref()
        .is_some_and(|s| s.type_ == ServiceType::NodePort);
    if wants_node_port {
        let node_port = spec
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.node_port)
            .or_else(|| ic.spec.service.as_ref().and_then(|s| s.node_port));
        if let Some(port) = node_port {
            return Some(format!("http://127.0.0.1:{port}"));
        }
    }
    let ip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    Some(format!("http://{host}:{CLIENT_SERVICE_PORT}"))
}

/// The DaemonSet that points every node's container runtime at the cache: one pod per node
/// (tolerating every taint) running `imagecache node-config --stay`, which writes the runtime's
/// mirror config for each chosen registry into the host directory and keeps it there until
/// stopped. `mirror_url` comes from [`node_mirror_url`]. The pod runs as root (the host
/// directories are root's) with every capability dropped and a read-only root file system.
pub fn node_config_daemonset(
    ic: &ImageCache,
    image: &str,
    mirror_url: &str,
) -> Result<DaemonSet, DesiredError> {
    let runtime = match node_runtime(ic) {
        crate::nodeconfig::Runtime::Crio => "crio",
        crate::nodeconfig::Runtime::Containerd => "containerd",
    };
    let hosts_dir = node_config_hosts_dir(ic);
    let mut args = vec![
        "node-config".to_owned(),
        "--mirror".to_owned(),
        mirror_url.to_owned(),
        "--runtime".to_owned(),
        runtime.to_owned(),
        "--hosts-dir".to_owned(),
        hosts_dir.clone(),
    ];
    for registry in node_config_registries(ic) {
        args.push("--registry".to_owned());
        args.push(registry);
    }
    args.push("--stay".to_owned());

    let selector = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            NODE_CONFIG_APP_NAME.to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), name(ic)?),
    ]);
    let mut pod_labels = selector.clone();
    pod_labels.insert(
        "app.kubernetes.io/component".to_owned(),
        NODE_CONFIG_COMPONENT.to_owned(),
    );
    pod_labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGED_BY.to_owned(),
    );
    let mut metadata = metadata(ic, node_config_name(ic)?)?;
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            NODE_CONFIG_COMPONENT.to_owned(),
        );
    }

    let container = Container {
        name: NODE_CONFIG_COMPONENT.to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec!["imagecache".to_owned()]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("5m".to_owned())),
                ("memory".to_owned(), Quantity("16Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("64Mi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "hosts-dir".to_owned(),
            mount_path: hosts_dir.clone(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    Ok(DaemonSet {
        metadata,
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // It never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_owned()),
                        ..Toleration::default()
                    }]),
                    // SIGTERM ends `--stay` promptly; no long grace is needed.
                    termination_grace_period_seconds: Some(10),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "hosts-dir".to_owned(),
                        host_path: Some(HostPathVolumeSource {
                            path: hosts_dir,
                            type_: Some("DirectoryOrCreate".to_owned()),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    })
}

/// The config file's shape (a subset of [`crate::config::Config`]; the rest keeps its defaults).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile<'a> {
    addr: &'a str,
    admin_addr: &'a str,
    admin_token_file: String,
    image_path: &'a str,
    default_registry: &'a str,
    #[serde(rename = "tagTTL")]
    tag_ttl: &'a str,
    air_gapped: bool,
    /// Empty: the embedded default allowlist (well-known public registries) applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    registries: Vec<RegistryEntry<'a>>,
    /// With more than one replica, the headless Service: the replicas find each other in its
    /// records and work as one cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_discovery: Option<PeerDiscoveryEntry>,
    /// `spec.preload`: pulled by each pod when it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    preload: Option<&'a crate::crd::PreloadSpec>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerDiscoveryEntry {
    /// `<name>-headless.<namespace>.svc`; the port is the registry port (the pods' `addr`).
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistryEntry<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthEntry {
    docker_config_file: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TlsEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure_skip_verify: bool,
}

fn registry_entry(upstream: &UpstreamSpec) -> RegistryEntry<'_> {
    let dir = upstream_dir(upstream);
    let auth = upstream.credentials_secret_ref.as_ref().map(|_| AuthEntry {
        docker_config_file: format!("{dir}/{DOCKER_CONFIG_FILE}"),
    });
    let ca_file = upstream
        .ca_secret_ref
        .as_ref()
        .map(|_| format!("{dir}/{CA_FILE}"));
    let tls = (ca_file.is_some() || upstream.insecure_skip_verify).then_some(TlsEntry {
        ca_file,
        insecure_skip_verify: upstream.insecure_skip_verify,
    });
    RegistryEntry {
        name: &upstream.name,
        endpoint: upstream.endpoint.as_deref(),
        auth,
        tls,
    }
}

/// Where an upstream's Secrets are mounted.
fn upstream_dir(upstream: &UpstreamSpec) -> String {
    format!("{UPSTREAMS_DIR}/{}", upstream.name)
}

/// One projected volume with an upstream's credentials (`.dockerconfigjson`) and CA (`ca.crt`),
/// or `None` when it names no Secret.
fn upstream_projection(upstream: &UpstreamSpec) -> Option<ProjectedVolumeSource> {
    let source = |name: &str, key: Option<&str>, path: &str| VolumeProjection {
        secret: Some(SecretProjection {
            name: name.to_owned(),
            items: Some(vec![key_to_path(key.unwrap_or(path), path)]),
            ..SecretProjection::default()
        }),
        ..VolumeProjection::default()
    };
    let mut sources = Vec::new();
    if let Some(r) = &upstream.credentials_secret_ref {
        sources.push(source(&r.name, r.key.as_deref(), DOCKER_CONFIG_FILE));
    }
    if let Some(r) = &upstream.ca_secret_ref {
        sources.push(source(&r.name, r.key.as_deref(), CA_FILE));
    }
    (!sources.is_empty()).then(|| ProjectedVolumeSource {
        sources: Some(sources),
        ..ProjectedVolumeSource::default()
    })
}

fn name(ic: &ImageCache) -> Result<String, DesiredError> {
    ic.metadata
        .name
        .clone()
        .ok_or(DesiredError::MissingMetadata("name"))
}

fn metadata(ic: &ImageCache, name: String) -> Result<ObjectMeta, DesiredError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            ic.metadata
                .namespace
                .clone()
                .ok_or(DesiredError::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(ic)?),
        owner_references: Some(vec![owner_reference(ic)?]),
        ..ObjectMeta::default()
    })
}

fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        ..KeyToPath::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, port: i32, target: &str, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        node_port,
        ..ServicePort::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn non_empty_map(map: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then_some(map)
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests;
