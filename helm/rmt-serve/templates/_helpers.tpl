{{/* Names: <release>-<chart>, shortened to 63 characters (a DNS label). */}}
{{- define "rmt-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rmt-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's object name: <fullname>-<component> ("api", "worker", "redis", ...). */}}
{{- define "rmt-serve.component" -}}
{{- printf "%s-%s" (include "rmt-serve.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rmt-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rmt-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rmt-serve
{{- end }}

{{- define "rmt-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rmt-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of a component's objects; call with (dict "ctx" $ "component" "api"). */}}
{{- define "rmt-serve.componentLabels" -}}
{{ include "rmt-serve.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rmt-serve.componentSelector" -}}
{{ include "rmt-serve.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rmt-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rmt-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rmt-serve.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The CUDA build of the image: image.cudaTag, else "<tag>-cuda". */}}
{{- define "rmt-serve.cudaImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cuda" $tag) .Values.image.cudaTag) }}
{{- end }}

{{- define "rmt-serve.modelsDir" -}}
{{- if .Values.models.pvc.enabled }}{{ .Values.models.pvc.mountPath }}
{{- else if .Values.models.initContainer.enabled }}{{ .Values.models.initContainer.mountPath }}
{{- else }}{{ .Values.models.dir }}{{ end }}
{{- end }}

{{/* Secret names and keys of the Redis URL / password and of the API keys. */}}
{{- define "rmt-serve.redisUrlSecret" -}}
{{- if .Values.redis.external.existingSecret }}{{ .Values.redis.external.existingSecret }}
{{- else }}{{ include "rmt-serve.component" (dict "ctx" . "component" "redis-url") }}{{ end }}
{{- end }}

{{- define "rmt-serve.redisPasswordSecret" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecret }}
{{- else }}{{ include "rmt-serve.component" (dict "ctx" . "component" "redis") }}{{ end }}
{{- end }}

{{- define "rmt-serve.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{- define "rmt-serve.apiKeysSecret" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}
{{- else }}{{ include "rmt-serve.component" (dict "ctx" . "component" "api-keys") }}{{ end }}
{{- end }}

{{/* True (non-empty) when the api checks keys. */}}
{{- define "rmt-serve.authOn" -}}
{{- if or .Values.auth.apiKeys .Values.auth.apiKeyHashes .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{/* Values that cannot be expressed in values.schema.json; rendering fails with the reason. */}}
{{- define "rmt-serve.validate" -}}
{{- if not .Values.redis.enabled }}
{{- if not (or .Values.redis.external.url .Values.redis.external.existingSecret) }}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.keda.redis.enabled (not .Values.keda.redis.address) }}
{{- fail "keda.redis.enabled with an external Redis: set keda.redis.address (host:port)" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled (not (or .Values.redis.auth.password .Values.redis.auth.existingSecret)) }}
{{- fail "redis.auth.enabled: set redis.auth.password or redis.auth.existingSecret" }}
{{- end }}
{{- if and .Values.models.pvc.enabled .Values.models.initContainer.enabled }}
{{- fail "models.pvc.enabled and models.initContainer.enabled exclude each other" }}
{{- end }}
{{- if and .Values.models.pvc.enabled (not .Values.models.pvc.claimName) }}
{{- fail "models.pvc.enabled: set models.pvc.claimName" }}
{{- end }}
{{- if and .Values.models.initContainer.enabled (not .Values.models.initContainer.command) }}
{{- fail "models.initContainer.enabled: set models.initContainer.command" }}
{{- end }}
{{- if and .Values.auth.existingSecret (or .Values.auth.apiKeys .Values.auth.apiKeyHashes) }}
{{- fail "auth.existingSecret excludes auth.apiKeys and auth.apiKeyHashes" }}
{{- end }}
{{- if and .Values.keda.enabled (not (or .Values.keda.redis.enabled .Values.keda.prometheus.enabled)) }}
{{- fail "keda.enabled: enable keda.redis and/or keda.prometheus" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.keda.prometheus.enabled (not .Values.keda.prometheus.serverAddress) }}
{{- fail "keda.prometheus.enabled: set keda.prometheus.serverAddress" }}
{{- end }}
{{- end }}

{{/*
RMT_SHUTDOWN_GRACE_MS as a component sees it: its env override, else config, else the app's
default (25000, src/config/config.ts). Call with (dict "ctx" $ "env" .Values.api.env).
*/}}
{{- define "rmt-serve.shutdownGraceMs" -}}
{{- $ms := 25000 }}
{{- if hasKey .ctx.Values.config "RMT_SHUTDOWN_GRACE_MS" }}{{ $ms = .ctx.Values.config.RMT_SHUTDOWN_GRACE_MS }}{{ end }}
{{- range .env }}{{ if and (eq .name "RMT_SHUTDOWN_GRACE_MS") (hasKey . "value") }}{{ $ms = .value }}{{ end }}{{ end }}
{{- int64 $ms }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the component's explicit value, which must exceed the grace, else
ceil(grace / 1000) + extra (a preStop sleep) + the margin. Call with
(dict "ctx" $ "name" "api" "values" .Values.api "extra" 5).
*/}}
{{- define "rmt-serve.terminationGrace" -}}
{{- $ms := include "rmt-serve.shutdownGraceMs" (dict "ctx" .ctx "env" .values.env) | int64 }}
{{- $needed := add (div (add $ms 999) 1000) (default 0 .extra) }}
{{- $explicit := .values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $explicit }}
{{- add $needed .ctx.Values.terminationGraceMarginSeconds }}
{{- else if le (int64 $explicit) (int64 $needed) }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be above RMT_SHUTDOWN_GRACE_MS (%d ms)%s: set it above %d or leave it null to compute it" .name (int64 $explicit) $ms (ternary " plus the preStop sleep" "" (gt (int64 (default 0 .extra)) 0)) $needed) }}
{{- else }}
{{- int64 $explicit }}
{{- end }}
{{- end }}

{{/*
Env entries set by the chart, minus those the component's own env list overrides, then that list.
Call with (dict "chart" (list of EnvVar) "own" .Values.api.env).
*/}}
{{- define "rmt-serve.mergeEnv" -}}
{{- $own := dict }}
{{- $mine := list }}
{{- range .own }}
{{- $_ := set $own .name true }}
{{- $e := deepCopy . }}
{{- /* --set api.env[0].value=4 gives a number; EnvVar values are strings. */}}
{{- if and (hasKey $e "value") (not (kindIs "string" $e.value)) }}
{{- $_ := set $e "value" (ternary (int64 $e.value | toString) (toString $e.value) (kindIs "float64" $e.value)) }}
{{- end }}
{{- $mine = append $mine $e }}
{{- end }}
{{- $out := list }}
{{- range .chart }}{{ if not (hasKey $own .name) }}{{ $out = append $out . }}{{ end }}{{ end }}
{{- concat $out $mine | toYaml }}
{{- end }}

{{/* REDIS_URL (and the password it embeds), as EnvVar entries; a YAML list. */}}
{{- define "rmt-serve.redisEnv" -}}
{{- if .Values.redis.enabled }}
{{- $host := printf "%s:%d" (include "rmt-serve.component" (dict "ctx" . "component" "redis")) (int .Values.redis.port) }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "rmt-serve.redisPasswordSecret" . }}, key: {{ include "rmt-serve.redisPasswordKey" . }}}}
# Kubernetes expands $(REDIS_PASSWORD) from the entry above.
- name: REDIS_URL
  value: redis://:$(REDIS_PASSWORD)@{{ $host }}
{{- else }}
- name: REDIS_URL
  value: redis://{{ $host }}
{{- end }}
{{- else }}
- name: REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ include "rmt-serve.redisUrlSecret" . }}, key: {{ ternary .Values.redis.external.existingSecretKey "redis-url" (ne .Values.redis.external.existingSecret "") }}}}
{{- end }}
{{- end }}

{{/* Env shared by api and worker: Redis and the models folder. */}}
{{- define "rmt-serve.commonEnv" -}}
{{ include "rmt-serve.redisEnv" . }}
- name: RMT_MODELS_DIR
  value: {{ include "rmt-serve.modelsDir" . | quote }}
{{- end }}

{{/* Pod annotations that roll the pods when their ConfigMap or Secrets change. */}}
{{- define "rmt-serve.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end }}

{{/* Volumes of the api and worker pods: /tmp, and the models when they are not in the image. */}}
{{- define "rmt-serve.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: {{ .Values.tmpSizeLimit }}}
{{- if .Values.models.pvc.enabled }}
- name: models
  persistentVolumeClaim: {claimName: {{ .Values.models.pvc.claimName }}, readOnly: true}
{{- else if .Values.models.initContainer.enabled }}
- name: models
  emptyDir: {sizeLimit: {{ .Values.models.initContainer.sizeLimit }}}
{{- end }}
{{- end }}

{{- define "rmt-serve.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.models.pvc.enabled }}
- name: models
  mountPath: {{ .Values.models.pvc.mountPath }}
  readOnly: true
  {{- with .Values.models.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- else if .Values.models.initContainer.enabled }}
- name: models
  mountPath: {{ .Values.models.initContainer.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The init container that fills the models emptyDir (models.initContainer). */}}
{{- define "rmt-serve.initContainers" -}}
{{- with .Values.models.initContainer }}
{{- if .enabled }}
initContainers:
  - name: fetch-models
    image: {{ printf "%s:%s" .image.repository .image.tag }}
    imagePullPolicy: {{ .image.pullPolicy }}
    command:{{ toYaml .command | nindent 6 }}
    {{- with .args }}
    args:{{ toYaml . | nindent 6 }}
    {{- end }}
    env:
      - name: MODELS_DIR
        value: {{ .mountPath | quote }}
      {{- with .env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    securityContext:{{ toYaml $.Values.securityContext | nindent 6 }}
    resources:{{ toYaml .resources | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: {{ .mountPath }}
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end }}
{{- end }}

{{/* A probe on the http port named `port`; call with (dict "path" "/healthz" "port" "http" "p" .Values.api.probes.liveness). */}}
{{- define "rmt-serve.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{ toYaml .p }}
{{- end }}

{{/* Worker processes (GPUs) per worker pod: worker.gpu.gpusPerPod with GPU workers, else 1. */}}
{{- define "rmt-serve.workerGpusPerPod" -}}
{{- if .Values.worker.gpu.enabled }}{{ .Values.worker.gpu.gpusPerPod | default 1 | int }}{{ else }}1{{ end }}
{{- end }}
