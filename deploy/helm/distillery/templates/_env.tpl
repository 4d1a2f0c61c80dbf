{{/* The environment of each service: exactly the variables its settings read
(services/<name>/settings.py and services/common/settings.py); plain ones from the ConfigMap,
secrets from Secrets. Call with (dict "root" $ "name" "registry"). */}}
{{- define "distillery.serviceEnv" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $ports := include "distillery.grpcPorts" $root | fromYaml -}}
{{- $secret := include "distillery.secretName" $root -}}
{{- $keys := $root.Values.secrets.keys -}}
{{- $providers := include "distillery.providerKeysSecretName" $root -}}
- name: DISTILLERY_GRPC_ADDRESS
  value: {{ printf "0.0.0.0:%v" (index $ports $name) | quote }}
{{- range list "DISTILLERY_LOG_LEVEL" "DISTILLERY_TRACING" "DISTILLERY_RPC_TIMEOUT_S" "DISTILLERY_SHUTDOWN_GRACE_S" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{- if $root.Values.settings.otlpEndpoint }}
{{ include "distillery.configEnv" (list "OTEL_EXPORTER_OTLP_ENDPOINT" $root) }}
{{- end }}
{{ include "distillery.secretEnv" (list "DISTILLERY_SERVICE_TOKEN" $secret $keys.serviceToken false) }}
- name: HOME
  value: /home/distillery
- name: HF_HOME
  value: {{ ternary "/var/cache/distillery/huggingface" "/home/distillery/.cache/huggingface" (eq $name "registry") }}
{{- if ne $name "gateway" }}
{{ include "distillery.secretEnv" (list "DISTILLERY_DATABASE_URL" $secret $keys.databaseUrl false) }}
{{- range list "DISTILLERY_S3_ENDPOINT" "DISTILLERY_S3_BUCKET" "DISTILLERY_S3_SECURE" "DISTILLERY_S3_REGION" "DISTILLERY_S3_PUBLIC_ENDPOINT" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{ include "distillery.secretEnv" (list "DISTILLERY_S3_ACCESS_KEY" $secret $keys.s3AccessKey false) }}
{{ include "distillery.secretEnv" (list "DISTILLERY_S3_SECRET_KEY" $secret $keys.s3SecretKey false) }}
{{- end }}
{{- if ne $name "registry" }}
{{ include "distillery.configEnv" (list "DISTILLERY_REGISTRY_ADDRESS" $root) }}
{{- end }}
{{- if eq $name "registry" }}
{{ include "distillery.secretEnv" (list "DISTILLERY_ADMIN_TOKEN" $secret $keys.adminToken false) }}
{{- range list "DISTILLERY_MODEL_CACHE_DIR" "DISTILLERY_MAX_LOADED_MODELS" "DISTILLERY_GATEWAY_URL" "DISTILLERY_VLLM_URL" "DISTILLERY_VLLM_DEDICATED_URL" "DISTILLERY_GGUF_CONVERTER" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{- end }}
{{- if eq $name "ingest" }}
{{- range list "DISTILLERY_UPLOAD_DIR" "DISTILLERY_MAX_UPLOAD_BYTES" "DISTILLERY_UPLOAD_PART_BYTES" "DISTILLERY_PRESIGN_EXPIRY_S" "DISTILLERY_MAX_LINE_BYTES" "DISTILLERY_CONTEXT_TOKENS" "DISTILLERY_ASR_MAX_CLIP_S" "DISTILLERY_ZIP_MAX_ENTRIES" "DISTILLERY_ZIP_MAX_BYTES" "DISTILLERY_ZIP_MAX_ENTRY_BYTES" "DISTILLERY_ZIP_MAX_RATIO" "DISTILLERY_IMAGE_MAX_PIXELS" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{- end }}
{{- if eq $name "teacher" }}
{{- range list "DISTILLERY_MASTER_KEY_FILE" "DISTILLERY_INGEST_ADDRESS" "DISTILLERY_TEACHER_TIMEOUT_S" "DISTILLERY_TEACHER_MAX_ATTEMPTS" "DISTILLERY_TEACHER_MAX_BACKOFF_S" "DISTILLERY_TEACHER_LEASE_S" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{- range $provider := list "openai" "anthropic" "google" "platform" }}
{{- range $setting := list "BASE_URL" "CONCURRENCY" "RPM" "TPM" }}
{{ include "distillery.configEnv" (list (printf "DISTILLERY_%s_%s" (upper $provider) $setting) $root) }}
{{- end }}
{{ include "distillery.secretEnv" (list (printf "DISTILLERY_%s_API_KEY" (upper $provider)) $providers (printf "%s-api-key" $provider) true) }}
{{- end }}
{{- end }}
{{- if eq $name "trainer" }}
{{- range list "DISTILLERY_INGEST_ADDRESS" "DISTILLERY_TEACHER_ADDRESS" "DISTILLERY_RAY_ADDRESS" "DISTILLERY_RAY_TOKEN_FILE" "DISTILLERY_TRAIN_WORKERS" "DISTILLERY_TRAIN_USE_GPU" "DISTILLERY_WORKER_GROUPS" "DISTILLERY_TRAINER_PUSH_ADDRESS" "DISTILLERY_RUN_LEASE_S" "DISTILLERY_JOB_S3_ACCESS" "DISTILLERY_RUN_TOKEN_LIFETIME_S" "DISTILLERY_JOB_SECRETS_URL_S" "DISTILLERY_JOB_CACHE_DIR" "DISTILLERY_ALLOW_HUB_MODELS" "DISTILLERY_MODEL_ROOTS" "DISTILLERY_RECIPES_FILE" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{- /* Ray's own client reads these (as the local stack sets them: distillery/stack/ray_head.client_env). */}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN_PATH
  value: {{ include "distillery.rayTokenFile" $root | quote }}
{{- end }}
{{- if eq $name "gateway" }}
{{- range list "DISTILLERY_GATEWAY_HTTP_ADDRESS" "DISTILLERY_TEACHER_ADDRESS" "DISTILLERY_INGEST_ADDRESS" "DISTILLERY_GENERATE_TIMEOUT_S" }}
{{ include "distillery.configEnv" (list . $root) }}
{{- end }}
{{ include "distillery.secretEnv" (list "DISTILLERY_VLLM_API_KEY" $providers "vllm-api-key" true) }}
{{- end }}
{{- end -}}
