//! Exact desired objects for a given ImageCache spec, against YAML goldens.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde::de::DeserializeOwned;

use super::*;
use crate::config::Config;

/// An ImageCache exercising every field the children depend on.
const SPEC: &str = r#"
replicas: 2
storage: {size: 50Gi, storageClassName: fast}
upstreams:
  - name: docker.io
    endpoint: https://registry-1.docker.io
    credentialsSecretRef: {name: hub-creds}
  - name: registry.local:5000
    caSecretRef: {name: local-ca, key: root.pem}
    credentialsSecretRef: {name: local-creds, key: config.json}
    insecureSkipVerify: true
  - name: ghcr.io
defaultRegistry: ghcr.io
tagTTL: 5m
airGapped: true
scheduling:
  nodeSelector: {node-role.kubernetes.io/infra: ""}
  tolerations: [{key: infra, operator: Exists, effect: NoSchedule}]
resources:
  requests: {cpu: 100m, memory: 128Mi}
  limits: {memory: 1Gi}
"#;

/// The smallest cache: one replica, emptyDir, a NodePort Service, no upstreams.
const SMALL_SPEC: &str = "storage: {emptyDir: true}\nservice: {type: NodePort, nodePort: 30500}\n";

const CONFIG_MAP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  labels:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror-config
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
data:
  config.yaml: |
    addr: 0.0.0.0:8080
    adminAddr: 0.0.0.0:8081
    adminTokenFile: /etc/imagecache/admin/token
    imagePath: /var/lib/imagecache
    defaultRegistry: ghcr.io
    tagTTL: 5m
    airGapped: true
    registries:
      - name: docker.io
        endpoint: https://registry-1.docker.io
        auth:
          dockerConfigFile: /etc/imagecache/upstreams/docker.io/.dockerconfigjson
      - name: registry.local:5000
        auth:
          dockerConfigFile: /etc/imagecache/upstreams/registry.local:5000/.dockerconfigjson
        tls:
          caFile: /etc/imagecache/upstreams/registry.local:5000/ca.crt
          insecureSkipVerify: true
      - name: ghcr.io
    peerDiscovery:
      name: mirror-headless.infra.svc
"#;

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  labels:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
spec:
  podManagementPolicy: Parallel
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/component: registry
      app.kubernetes.io/instance: mirror
      app.kubernetes.io/name: imagecache
  serviceName: mirror-headless
  template:
    metadata:
      annotations:
        imagecache.io/config-hash: abc
      labels:
        app.kubernetes.io/component: registry
        app.kubernetes.io/instance: mirror
        app.kubernetes.io/managed-by: imagecache-operator
        app.kubernetes.io/name: imagecache
    spec:
      containers:
        - args:
            - serve
            - "--config"
            - /etc/imagecache/config.yaml
          command:
            - imagecache
          image: img:1
          livenessProbe:
            failureThreshold: 6
            httpGet:
              path: /healthz
              port: admin
              scheme: HTTP
            periodSeconds: 10
            timeoutSeconds: 2
          name: registry
          ports:
            - containerPort: 8080
              name: registry
              protocol: TCP
            - containerPort: 8081
              name: admin
              protocol: TCP
          readinessProbe:
            failureThreshold: 3
            httpGet:
              path: /readyz
              port: admin
              scheme: HTTP
            periodSeconds: 5
            timeoutSeconds: 2
          resources:
            limits:
              memory: 1Gi
            requests:
              cpu: 100m
              memory: 128Mi
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop:
                - ALL
            readOnlyRootFilesystem: true
            runAsNonRoot: true
          volumeMounts:
            - mountPath: /etc/imagecache/config.yaml
              name: config
              readOnly: true
              subPath: config.yaml
            - mountPath: /etc/imagecache/admin
              name: admin-token
              readOnly: true
            - mountPath: /tmp
              name: tmp
            - mountPath: /var/lib/imagecache
              name: data
            - mountPath: /etc/imagecache/upstreams/docker.io
              name: upstream-0
              readOnly: true
            - mountPath: /etc/imagecache/upstreams/registry.local:5000
              name: upstream-1
              readOnly: true
      nodeSelector:
        node-role.kubernetes.io/infra: ""
      securityContext:
        fsGroup: 65532
        runAsGroup: 65532
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile:
          type: RuntimeDefault
      tolerations:
        - effect: NoSchedule
          key: infra
          operator: Exists
      volumes:
        - configMap:
            items:
              - key: config.yaml
                path: config.yaml
            name: mirror-config
          name: config
        - name: admin-token
          secret:
            items:
              - key: token
                path: token
            secretName: mirror-admin-token
        - emptyDir: {}
          name: tmp
        - name: upstream-0
          projected:
            sources:
              - secret:
                  items:
                    - key: .dockerconfigjson
                      path: .dockerconfigjson
                  name: hub-creds
        - name: upstream-1
          projected:
            sources:
              - secret:
                  items:
                    - key: config.json
                      path: .dockerconfigjson
                  name: local-creds
              - secret:
                  items:
                    - key: root.pem
                      path: ca.crt
                  name: local-ca
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        labels:
          app.kubernetes.io/component: registry
          app.kubernetes.io/instance: mirror
          app.kubernetes.io/name: imagecache
        name: data
      spec:
        accessModes:
          - ReadWriteOnce
        resources:
          requests:
            storage: 50Gi
        storageClassName: fast
"#;

const HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  labels:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror-headless
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
spec:
  clusterIP: None
  ports:
    - name: registry
      port: 8080
      protocol: TCP
      targetPort: registry
    - name: admin
      port: 8081
      protocol: TCP
      targetPort: admin
  selector:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/name: imagecache
"#;

const CLIENT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  labels:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
spec:
  ports:
    - name: registry
      port: 5000
      protocol: TCP
      targetPort: registry
  selector:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/name: imagecache
  sessionAffinity: ClientIP
  type: ClusterIP
"#;

const SECRET: &str = r#"
apiVersion: v1
kind: Secret
data:
  token: czNjcmV0
metadata:
  labels:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror-admin-token
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
type: Opaque
"#;

const PDB_MIN: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  labels:
    app.kubernetes.io/component: registry
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror-pdb
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/component: registry
      app.kubernetes.io/instance: mirror
      app.kubernetes.io/name: imagecache
"#;

fn cache(spec_yaml: &str) -> ImageCache {
    let spec = serde_saphyr::from_str(spec_yaml).unwrap();
    let mut ic = ImageCache::new("mirror", spec);
    ic.metadata.namespace = Some("infra".to_owned());
    ic.metadata.uid = Some("0b9f6c1e-uid".to_owned());
    ic
}

fn parse<T: DeserializeOwned>(yaml: &str) -> T {
    serde_saphyr::from_str(yaml).unwrap()
}

fn pod_spec(sts: &StatefulSet) -> &PodSpec {
    sts.spec.template.spec.as_ref().unwrap()
}

fn registry_container(sts: &StatefulSet) -> &Container {
    &pod_spec(sts).containers[0]
}

#[test]
fn config_map_is_exact() {
    assert_eq!(
        config_map(&cache(SPEC)).unwrap(),
        parse::<ConfigMap>(CONFIG_MAP)
    );
}

#[test]
fn rendered_config_parses_and_validates() {
    let config = Config::from_yaml(&config_yaml(&cache(SPEC)).unwrap()).unwrap();
    config.validate().unwrap();
    assert_eq!(config.addr.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin_addr.to_string(), "0.0.0.0:8081");
    assert_eq!(
        config.admin_token_file.as_deref(),
        Some(std::path::Path::new("/etc/imagecache/admin/token"))
    );
    assert_eq!(
        config.image_path,
        std::path::Path::new("/var/lib/imagecache")
    );
    assert_eq!(config.default_registry, "ghcr.io");
    assert_eq!(config.tag_ttl, std::time::Duration::from_secs(300));
    assert!(config.air_gapped);
    assert!(!config.allow_any_upstream);
    let names: Vec<_> = config.registries.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["docker.io", "registry.local:5000", "ghcr.io"]);
    let local = &config.registries[1];
    assert_eq!(local.endpoint_url(), "https://registry.local:5000");
    assert_eq!(
        local.auth.as_ref().unwrap().docker_config_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/imagecache/upstreams/registry.local:5000/.dockerconfigjson"
        ))
    );
    let tls = local.tls.as_ref().unwrap();
    assert_eq!(
        tls.ca_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/imagecache/upstreams/registry.local:5000/ca.crt"
        ))
    );
    assert!(tls.insecure_skip_verify);
    assert!(config.registries[2].auth.is_none() && config.registries[2].tls.is_none());
    let discovery = config.peer_discovery.as_ref().unwrap();
    assert_eq!(discovery.name, "mirror-headless.infra.svc");
    assert_eq!(discovery.port, None, "the pods' registry port");
    assert!(config.peers.is_empty());
}

#[test]
fn replicated_caches_find_their_peers_in_the_headless_service() {
    // More than one replica: peerDiscovery names the headless Service, which lists only ready
    // pods, on the registry port every pod listens on.
    let mut ic = cache(SMALL_SPEC);
    for replicas in [2, 3, 7] {
        ic.spec.replicas = replicas;
        let config = Config::from_yaml(&config_yaml(&ic).unwrap()).unwrap();
        config.validate().unwrap();
        let d = config
            .peer_discovery
            .expect("peerDiscovery with replicas > 1");
        assert_eq!(d.name, "mirror-headless.infra.svc");
        assert_eq!(d.port.unwrap_or(config.addr.port()), REGISTRY_PORT as u16);
        let headless = headless_service(&ic).unwrap();
        let spec = headless.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_ne!(spec.publish_not_ready_addresses, Some(true));
        assert!(
            spec.ports
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some("registry") && p.port == REGISTRY_PORT)
        );
    }
    // One replica: no peers (the config, and so the pods, stay as they were).
    ic.spec.replicas = 1;
    assert!(!config_yaml(&ic).unwrap().contains("peerDiscovery"));
    assert_eq!(peer_discovery_name(&ic).unwrap(), None);
    // The name needs the namespace.
    ic.spec.replicas = 2;
    ic.metadata.namespace = None;
    assert!(matches!(
        peer_discovery_name(&ic),
        Err(DesiredError::MissingMetadata("namespace"))
    ));
}

#[test]
fn config_without_upstreams_keeps_the_default_allowlist() {
    let yaml = config_yaml(&cache(SMALL_SPEC)).unwrap();
    assert_eq!(
        yaml,
        "addr: 0.0.0.0:8080\nadminAddr: 0.0.0.0:8081\nadminTokenFile: /etc/imagecache/admin/token\n\
         imagePath: /var/lib/imagecache\ndefaultRegistry: docker.io\ntagTTL: 15m\nairGapped: false\n"
    );
    let config = Config::from_yaml(&yaml).unwrap();
    config.validate().unwrap();
    assert_eq!(config.registries, Config::default().registries);
    assert_eq!(config.tag_ttl, Config::default().tag_ttl);
}

#[test]
fn preload_reaches_the_registry_config() {
    let mut ic = cache(SMALL_SPEC);
    ic.spec.preload = Some(crate::crd::PreloadSpec {
        images: vec![
            "nginx:1.27".into(),
            "quay.io/org/app@sha256:".to_string() + &"a".repeat(64),
        ],
        platforms: vec!["linux/arm64".into()],
    });
    let config = Config::from_yaml(&config_yaml(&ic).unwrap()).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.preload.images,
        ic.spec.preload.as_ref().unwrap().images
    );
    assert_eq!(config.preload.platforms, ["linux/arm64"]);
    // An empty list adds nothing (and so does not roll the pods).
    ic.spec.preload = Some(crate::crd::PreloadSpec::default());
    assert_eq!(
        config_yaml(&ic).unwrap(),
        config_yaml(&cache(SMALL_SPEC)).unwrap()
    );
}

#[test]
fn config_hash_follows_the_config() {
    let a = config_hash(&config_yaml(&cache(SPEC)).unwrap());
    assert_eq!(a, config_hash(&config_yaml(&cache(SPEC)).unwrap()));
    assert_eq!(a.len(), 64);
    assert_ne!(a, config_hash(&config_yaml(&cache(SMALL_SPEC)).unwrap()));
}

#[test]
fn statefulset_is_exact() {
    let sts = statefulset(&cache(SPEC), "img:1", "abc").unwrap();
    assert_eq!(sts, parse::<StatefulSet>(STATEFULSET));
}

#[test]
fn statefulset_with_empty_dir_has_no_claims() {
    let sts = statefulset(&cache(SMALL_SPEC), "img:1", "abc").unwrap();
    // Everything but the replicas, the volumes and the spec-driven fields is as in the golden.
    let mut expected = parse::<StatefulSet>(STATEFULSET);
    expected.spec.replicas = Some(1);
    expected.spec.volume_claim_templates = None;
    let pod = expected.spec.template.spec.as_mut().unwrap();
    pod.node_selector = None;
    pod.tolerations = None;
    let volumes = pod.volumes.as_mut().unwrap();
    volumes.retain(|v| !v.name.starts_with("upstream-"));
    volumes.push(Volume {
        name: "data".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    let container = &mut pod.containers[0];
    container.resources = None;
    container
        .volume_mounts
        .as_mut()
        .unwrap()
        .retain(|m| m.name != "upstream-0" && m.name != "upstream-1");
    assert_eq!(sts, expected);
    let mounts: Vec<_> = registry_container(&sts)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/imagecache/config.yaml"),
            ("admin-token", "/etc/imagecache/admin"),
            ("tmp", "/tmp"),
            ("data", "/var/lib/imagecache"),
        ]
    );
}

#[test]
fn statefulset_defaults_the_claim_size() {
    let sts = statefulset(&cache("{}"), "img:1", "abc").unwrap();
    let claims = sts.spec.volume_claim_templates.unwrap();
    let claim = claims[0].spec.as_ref().unwrap();
    assert_eq!(claim.storage_class_name, None);
    assert_eq!(
        claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
        Quantity("10Gi".to_owned())
    );
}

#[test]
fn statefulset_selects_its_pods_and_rolls_on_config_change() {
    let ic = cache(SPEC);
    let sts = statefulset(&ic, "img:1", "abc").unwrap();
    let pod_labels = sts
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in sts.spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "{k}");
    }
    for service in [headless_service(&ic).unwrap(), client_service(&ic).unwrap()] {
        assert_eq!(
            service.spec.unwrap().selector,
            sts.spec.selector.match_labels
        );
    }
    let other = statefulset(&ic, "img:1", "def").unwrap();
    assert_ne!(sts.spec.template, other.spec.template);
    assert_eq!(
        other.spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION],
        "def"
    );
}

#[test]
fn headless_service_is_exact() {
    assert_eq!(
        headless_service(&cache(SPEC)).unwrap(),
        parse::<Service>(HEADLESS)
    );
}

#[test]
fn client_service_is_exact() {
    assert_eq!(
        client_service(&cache(SPEC)).unwrap(),
        parse::<Service>(CLIENT)
    );
}

#[test]
fn client_service_node_port() {
    let mut expected = parse::<Service>(CLIENT);
    let spec = expected.spec.as_mut().unwrap();
    spec.type_ = Some("NodePort".to_owned());
    spec.ports.as_mut().unwrap()[0].node_port = Some(30500);
    assert_eq!(client_service(&cache(SMALL_SPEC)).unwrap(), expected);
    // A NodePort Service without a port gets one allocated.
    let ic = cache("service: {type: NodePort}");
    let spec = client_service(&ic).unwrap().spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.ports.unwrap()[0].node_port, None);
}

#[test]
fn admin_token_secret_is_exact() {
    let secret = admin_token_secret(&cache(SPEC), "s3cret").unwrap();
    assert_eq!(secret, parse::<Secret>(SECRET));
    assert_eq!(secret.data.unwrap()["token"].0, b"s3cret");
}

#[test]
fn pod_disruption_budget_by_replicas() {
    assert_eq!(
        pod_disruption_budget(&cache(SPEC)).unwrap(),
        parse::<PodDisruptionBudget>(PDB_MIN)
    );
    let mut expected = parse::<PodDisruptionBudget>(PDB_MIN);
    let spec = expected.spec.as_mut().unwrap();
    spec.min_available = None;
    spec.max_unavailable = Some(IntOrString::Int(1));
    assert_eq!(pod_disruption_budget(&cache(SMALL_SPEC)).unwrap(), expected);
}

#[test]
fn names() {
    let ic = cache(SPEC);
    assert_eq!(statefulset_name(&ic).unwrap(), "mirror");
    assert_eq!(headless_service_name(&ic).unwrap(), "mirror-headless");
    assert_eq!(config_map_name(&ic).unwrap(), "mirror-config");
    assert_eq!(admin_token_secret_name(&ic).unwrap(), "mirror-admin-token");
    assert_eq!(pdb_name(&ic).unwrap(), "mirror-pdb");
}

#[test]
fn missing_metadata_is_an_error() {
    let mut ic = cache(SPEC);
    ic.metadata.uid = None;
    let err = config_map(&ic).unwrap_err();
    assert!(matches!(err, DesiredError::MissingMetadata("uid")), "{err}");
    let mut ic = cache(SPEC);
    ic.metadata.namespace = None;
    assert!(matches!(
        statefulset(&ic, "img:1", "abc").unwrap_err(),
        DesiredError::MissingMetadata("namespace")
    ));
}

/// The node-config DaemonSet of [`SPEC`] with node mirroring on (containerd, every upstream).
const NODE_CONFIG: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  labels:
    app.kubernetes.io/component: node-config
    app.kubernetes.io/instance: mirror
    app.kubernetes.io/managed-by: imagecache-operator
    app.kubernetes.io/name: imagecache
  name: mirror-node-config
  namespace: infra
  ownerReferences:
    - apiVersion: imagecache.io/v1alpha1
      blockOwnerDeletion: true
      controller: true
      kind: ImageCache
      name: mirror
      uid: 0b9f6c1e-uid
spec:
  selector:
    matchLabels:
      app.kubernetes.io/instance: mirror
      app.kubernetes.io/name: imagecache-node-config
  template:
    metadata:
      labels:
        app.kubernetes.io/component: node-config
        app.kubernetes.io/instance: mirror
        app.kubernetes.io/managed-by: imagecache-operator
        app.kubernetes.io/name: imagecache-node-config
    spec:
      automountServiceAccountToken: false
      containers:
        - name: node-config
          image: img:1
          command: [imagecache]
          args:
            - node-config
            - --mirror
            - http://10.96.0.12:5000
            - --runtime
            - containerd
            - --hosts-dir
            - /etc/containerd/certs.d
            - --registry
            - docker.io
            - --registry
            - registry.local:5000
            - --registry
            - ghcr.io
            - --stay
          resources:
            requests: {cpu: 5m, memory: 16Mi}
            limits: {memory: 64Mi}
          securityContext:
            runAsUser: 0
            runAsGroup: 0
            runAsNonRoot: false
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - name: hosts-dir
              mountPath: /etc/containerd/certs.d
      securityContext:
        seccompProfile: {type: RuntimeDefault}
      terminationGracePeriodSeconds: 10
      tolerations:
        - operator: Exists
      volumes:
        - name: hosts-dir
          hostPath:
            path: /etc/containerd/certs.d
            type: DirectoryOrCreate
"#;

fn with_node_mirror(spec: &str, node_mirror: &str) -> ImageCache {
    cache(&format!("{spec}\nnodeMirror: {node_mirror}\n"))
}

fn node_config_args(ds: &DaemonSet) -> Vec<String> {
    ds.spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap()
}

#[test]
fn node_config_daemonset_is_exact() {
    let ic = with_node_mirror(SPEC, "{enabled: true}");
    let ds = node_config_daemonset(&ic, "img:1", "http://10.96.0.12:5000").unwrap();
    assert_eq!(ds, parse::<DaemonSet>(NODE_CONFIG));
    assert_eq!(node_config_name(&ic).unwrap(), "mirror-node-config");
}

#[test]
fn node_config_pods_are_not_registry_pods() {
    // The Services, the PDB and the operator's pod listing select registry pods by these labels;
    // a node-config pod matching them would receive pulls.
    let ic = with_node_mirror(SPEC, "{enabled: true}");
    let ds = node_config_daemonset(&ic, "img:1", "http://x:5000").unwrap();
    let spec = ds.spec;
    let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
    let registry_selector = selector_labels(&ic).unwrap();
    assert!(
        !registry_selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{pod_labels:?}"
    );
    for (k, v) in spec.selector.match_labels.unwrap() {
        assert_eq!(pod_labels.get(&k), Some(&v), "{k}");
    }
}

#[test]
fn node_config_crio_with_chosen_registries_and_dir() {
    let ic = with_node_mirror(
        SPEC,
        "{enabled: true, runtime: crio, registries: [quay.io, docker.io, quay.io]}",
    );
    assert_eq!(
        node_config_args(&node_config_daemonset(&ic, "img:1", "http://127.0.0.1:30500").unwrap()),
        [
            "node-config",
            "--mirror",
            "http://127.0.0.1:30500",
            "--runtime",
            "crio",
            "--hosts-dir",
            "/etc/containers/registries.conf.d",
            "--registry",
            "quay.io",
            "--registry",
            "docker.io",
            "--stay"
        ]
    );
    let ic = with_node_mirror(
        SPEC,
        "{enabled: true, runtime: crio, hostsDir: /opt/crio/registries.d}",
    );
    let ds = node_config_daemonset(&ic, "img:1", "http://x:5000").unwrap();
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(
        pod.volumes.unwrap()[0].host_path.as_ref().unwrap().path,
        "/opt/crio/registries.d"
    );
    assert_eq!(
        pod.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
        "/opt/crio/registries.d"
    );
}

#[test]
fn node_config_without_upstreams_mirrors_the_default_registry() {
    let ic = with_node_mirror(SMALL_SPEC, "{enabled: true}");
    assert_eq!(node_config_registries(&ic), ["docker.io"]);
    let ic = cache("defaultRegistry: ghcr.io\nnodeMirror: {enabled: true}");
    assert_eq!(node_config_registries(&ic), ["ghcr.io"]);
}

#[test]
fn node_mirror_url_from_the_applied_service() {
    let applied = |yaml: &str| -> Service { parse(yaml) };
    let ic = cache(SPEC);
    assert_eq!(
        node_mirror_url(&ic, &applied("spec: {clusterIP: 10.96.0.12}")).as_deref(),
        Some("http://10.96.0.12:5000")
    );
    assert_eq!(
        node_mirror_url(&ic, &applied("spec: {clusterIP: 'fd00::12'}")).as_deref(),
        Some("http://[fd00::12]:5000")
    );
    // Not allocated yet: no URL, the DaemonSet waits.
    assert_eq!(
        node_mirror_url(&ic, &applied("spec: {type: ClusterIP}")),
        None
    );
    assert_eq!(node_mirror_url(&ic, &applied("metadata: {name: x}")), None);

    // NodePort: the node's own port, the allocated one when the spec leaves it out.
    let ic = cache("service: {type: NodePort}");
    let svc = applied(
        "spec: {type: NodePort, clusterIP: 10.96.0.12, ports: [{port: 5000, nodePort: 31234}]}",
    );
    assert_eq!(
        node_mirror_url(&ic, &svc).as_deref(),
        Some("http://127.0.0.1:31234")
    );
    let ic = cache(SMALL_SPEC);
    assert_eq!(
        node_mirror_url(&ic, &applied("spec: {clusterIP: 10.96.0.12}")).as_deref(),
        Some("http://127.0.0.1:30500")
    );
    // NodePort without a port known yet: the ClusterIP still works.
    let ic = cache("service: {type: NodePort}");
    assert_eq!(
        node_mirror_url(&ic, &applied("spec: {clusterIP: 10.96.0.12}")).as_deref(),
        Some("http://10.96.0.12:5000")
    );
}
