{{/* Names, labels, images, addresses and the pieces every pod shares. */}}

{{- define "distillery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-distillery", or the release name alone when it already says distillery. Kept short:
object names add up to 20 characters to it ("-ray-head-svc", "-registry"). */}}
{{- define "distillery.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "distillery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "registry"). */}}
{{- define "distillery.labels" -}}
helm.sh/chart: {{ include "distillery.chart" .root }}
{{ include "distillery.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: distillery
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "distillery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distillery.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "distillery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "distillery.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The services: gRPC port of each (the gateway's serves health only; its HTTP port is gatewayHttpPort). */}}
{{- define "distillery.grpcPorts" -}}
registry: 50051
ingest: 50052
teacher: 50053
trainer: 50054
gateway: 50055
{{- end -}}

{{- define "distillery.gatewayHttpPort" -}}8080{{- end -}}

{{/* host:port of a service inside the namespace; call with (dict "root" $ "name" "registry"). */}}
{{- define "distillery.address" -}}
{{- $ports := include "distillery.grpcPorts" .root | fromYaml -}}
{{- printf "%s-%s:%v" (include "distillery.fullname" .root) .name (index $ports .name) -}}
{{- end -}}

{{- define "distillery.gatewayInternalUrl" -}}
{{- printf "http://%s-gateway:%s" (include "distillery.fullname" .) (include "distillery.gatewayHttpPort" .) -}}
{{- end -}}

{{/* The gateway's base URL as users reach it (DISTILLERY_GATEWAY_URL). */}}
{{- define "distillery.gatewayUrl" -}}
{{- if .Values.registry.gatewayUrl -}}
{{- .Values.registry.gatewayUrl | trimSuffix "/" -}}
{{- else if .Values.gateway.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" (ne .Values.gateway.ingress.tlsSecretName "")) .Values.gateway.ingress.host -}}
{{- else -}}
{{- include "distillery.gatewayInternalUrl" . -}}
{{- end -}}
{{- end -}}

{{/* Images. */}}
{{- define "distillery.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "distillery.imagePrefix" -}}
{{- if .Values.image.registry -}}{{ .Values.image.registry | trimSuffix "/" }}/{{- end -}}
{{- end -}}

{{- define "distillery.serviceImage" -}}
{{- printf "%s%s:%s" (include "distillery.imagePrefix" .) .Values.image.service.repository (include "distillery.tag" .) -}}
{{- end -}}

{{/* The Ray image; call with (dict "root" $ "cuda" true). */}}
{{- define "distillery.rayImage" -}}
{{- $tag := include "distillery.tag" .root -}}
{{- if .cuda }}{{ $tag = printf "%s%s" $tag .root.Values.image.rayWorker.cudaTagSuffix }}{{ end -}}
{{- printf "%s%s:%s" (include "distillery.imagePrefix" .root) .root.Values.image.rayWorker.repository $tag -}}
{{- end -}}

{{/* Secrets: the platform's, the master key's and the Ray token's. */}}
{{- define "distillery.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.generate -}}
{{- printf "%s-secrets" (include "distillery.fullname" .) -}}
{{- else -}}
{{- fail "secrets.existingSecret is required when secrets.generate is false: name a Secret holding database-url, s3-access-key, s3-secret-key, admin-token and service-token (see docs/kubernetes.md)" -}}
{{- end -}}
{{- end -}}

{{- define "distillery.masterKeySecretName" -}}
{{- if .Values.secrets.masterKey.existingSecret -}}
{{- .Values.secrets.masterKey.existingSecret -}}
{{- else if .Values.secrets.generate -}}
{{- printf "%s-master-key" (include "distillery.fullname" .) -}}
{{- else -}}
{{- fail "secrets.masterKey.existingSecret is required when secrets.generate is false: name a Secret holding the teacher's master key (base64 of 32 random bytes: `openssl rand -base64 32`)" -}}
{{- end -}}
{{- end -}}

{{- define "distillery.providerKeysSecretName" -}}
{{- default (include "distillery.secretName" .) .Values.secrets.providerKeys.existingSecret -}}
{{- end -}}

{{- define "distillery.rayTokenSecretName" -}}
{{- if .Values.ray.auth.existingSecret -}}
{{- .Values.ray.auth.existingSecret -}}
{{- else if .Values.secrets.generate -}}
{{- printf "%s-ray-token" (include "distillery.fullname" .) -}}
{{- else -}}
{{- fail "ray.auth.existingSecret is required when secrets.generate is false: name a Secret holding the Ray token under the key auth_token (`openssl rand -hex 32`)" -}}
{{- end -}}
{{- end -}}

{{/* The Ray cluster (KubeRay names the head's Service "<cluster>-head-svc"). */}}
{{- define "distillery.rayClusterName" -}}
{{- printf "%s-ray" (include "distillery.fullname" .) -}}
{{- end -}}

{{- define "distillery.rayAddress" -}}
{{- if .Values.ray.enabled -}}
{{- printf "http://%s-head-svc:8265" (include "distillery.rayClusterName" .) -}}
{{- else -}}
{{- .Values.ray.externalAddress -}}
{{- end -}}
{{- end -}}

{{/* The object store's host:port. */}}
{{- define "distillery.s3Endpoint" -}}
{{- if .Values.devObjectStore.enabled -}}
{{- printf "%s-objectstore:8333" (include "distillery.fullname" .) -}}
{{- else if .Values.objectStore.endpoint -}}
{{- .Values.objectStore.endpoint -}}
{{- else -}}
{{- fail "objectStore.endpoint is required when devObjectStore.enabled is false (host:port of your S3-compatible store)" -}}
{{- end -}}
{{- end -}}

{{/* Where the mounted secrets and caches are. */}}
{{- define "distillery.masterKeyFile" -}}/var/run/secrets/distillery/master-key/master-key{{- end -}}
{{- define "distillery.rayTokenFile" -}}/var/run/secrets/distillery/ray/auth_token{{- end -}}
{{- define "distillery.recipesFile" -}}/etc/distillery/recipes/recipes.toml{{- end -}}

{{/* Restricted pod security (Pod Security Standards "restricted"). */}}
{{- define "distillery.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "distillery.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A Secret's value as an env var; call with (list "NAME" "secret" "key" optional). */}}
{{- define "distillery.secretEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 }}
      key: {{ index . 2 }}
      {{- if index . 3 }}
      optional: true
      {{- end }}
{{- end -}}

{{/* A ConfigMap key as an env var (the key is the variable's name); call with (list "NAME" $). */}}
{{- define "distillery.configEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    configMapKeyRef:
      name: {{ include "distillery.fullname" (index . 1) }}-config
      key: {{ index . 0 }}
{{- end -}}

{{/* What every Ray container gets: token auth (as KubeRay's authOptions sets it) and writable places
on a read-only root filesystem. Call with (dict "root" $ "secret" "<token Secret>"). */}}
{{- define "distillery.rayEnv" -}}
- name: RAY_AUTH_MODE
  value: token
{{ include "distillery.secretEnv" (list "RAY_AUTH_TOKEN" .secret "auth_token" false) }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: HOME
  value: /home/distillery
{{- end -}}

{{- define "distillery.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/distillery
- name: shm
  mountPath: /dev/shm
- name: job-cache
  mountPath: {{ .Values.ray.jobCacheDir }}
{{- end -}}

{{/* Call with (dict "root" $ "shm" "2Gi"). */}}
{{- define "distillery.rayVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 10Gi
- name: home
  emptyDir:
    sizeLimit: 1Gi
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
- name: job-cache
  emptyDir:
    sizeLimit: {{ .root.Values.ray.jobCacheSize }}
{{- end -}}

{{/* A CPU quantity as a number ("500m" -> 0.5, "2" -> 2); 0 when not given. */}}
{{- define "distillery.cpus" -}}
{{- $q := toString (default "0" .) -}}
{{- if hasSuffix "m" $q -}}{{- divf (trimSuffix "m" $q | float64) 1000 -}}{{- else -}}{{- $q | float64 -}}{{- end -}}
{{- end -}}

{{/* DISTILLERY_WORKER_GROUPS (services/trainer/worker_groups.py): the RayCluster's worker groups as the
trainer offers them to runs; "" without the chart's RayCluster (one group from DISTILLERY_TRAIN_WORKERS). */}}
{{- define "distillery.workerGroups" -}}
{{- if .Values.ray.enabled -}}
{{- $groups := list -}}
{{- $cpu := .Values.ray.cpuWorkers -}}
{{- if $cpu.enabled -}}
{{- $cpus := include "distillery.cpus" (coalesce (($cpu.resources.limits | default dict).cpu) (($cpu.resources.requests | default dict).cpu) "0") | float64 -}}
{{- $groups = append $groups (dict "name" $cpu.groupName "max_workers" (int $cpu.maxReplicas) "gpus_per_worker" 0 "cpus_per_worker" $cpus) -}}
{{- end -}}
{{- range .Values.ray.gpuWorkerGroups -}}
{{- $cpus := include "distillery.cpus" (coalesce ((.resources.limits | default dict).cpu) ((.resources.requests | default dict).cpu) "0") | float64 -}}
{{- $groups = append $groups (dict "name" .name "max_workers" (int .maxReplicas) "gpus_per_worker" (int .gpusPerWorker) "cpus_per_worker" $cpus "gpu_type" (.gpuType | default "")) -}}
{{- end -}}
{{- toJson $groups -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy pieces: a selector of release pods by component; egress rules to CIDRs and ports. */}}
{{- define "distillery.np.components" -}}
matchLabels:
  app.kubernetes.io/instance: {{ .instance }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: {{ toJson .components }}
{{- end -}}
{{- define "distillery.np.external" -}}
{{- range . }}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end -}}

{{/* Probes of the Ray containers: the dashboard agent's public health endpoint (raylet, and on the head the
GCS too; Ray 2.53+). Given explicitly so that KubeRay does not add its wget-based ones (the images have no wget). */}}
{{- define "distillery.rayProbes" -}}
readinessProbe:
  httpGet:
    path: /api/healthz
    port: 52365
  initialDelaySeconds: 10
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 10
livenessProbe:
  httpGet:
    path: /api/healthz
    port: 52365
  initialDelaySeconds: 30
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 120
{{- end -}}
