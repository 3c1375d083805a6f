{{/* Names */}}
{{- define "spillway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spillway.fullname" -}}
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

{{- define "spillway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels */}}
{{- define "spillway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spillway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spillway.labels" -}}
helm.sh/chart: {{ include "spillway.chart" . }}
{{ include "spillway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spillway.gatewaySelectorLabels" -}}
{{ include "spillway.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "spillway.redisSelectorLabels" -}}
{{ include "spillway.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "spillway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spillway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "spillway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "spillway.redisName" -}}
{{- printf "%s-redis" (include "spillway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The spillway.yaml the pods run: the user's config plus what the chart decides. */}}
{{- define "spillway.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if not $cfg.backends }}
{{- /* files/demo.yaml links to the gateway's built-in default config */}}
{{- $demo := .Files.Get "files/demo.yaml" | fromYaml }}
{{- range $k := list "backends" "pools" "models" "teams" "keys" }}
{{- $_ := set $cfg $k (get $demo $k) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "listen" (dict "host" "0.0.0.0" "port" (int .Values.containerPort)) }}
{{- $redis := deepCopy (default (dict) $cfg.redis) }}
{{- if eq .Values.redis.mode "none" }}
{{- $_ := set $redis "url" "" }}
{{- else }}
{{- $_ := set $redis "url" "${REDIS_URL}" }}
{{- end }}
{{- $_ := set $cfg "redis" $redis }}
{{- $server := deepCopy (default (dict) $cfg.server) }}
{{- if not (hasKey $server "shutdown_grace_seconds") }}
{{- $_ := set $server "shutdown_grace_seconds" (int .Values.drainSeconds) }}
{{- end }}
{{- $_ := set $server "metrics_port" (int .Values.metrics.port) }}
{{- $_ := set $cfg "server" $server }}
{{- if or .Values.auth.jwt .Values.auth.userLimits }}
{{- $auth := dict "jwt" .Values.auth.jwt }}
{{- if .Values.auth.userLimits }}
{{- $_ := set $auth "user_limits" .Values.auth.userLimits }}
{{- end }}
{{- $_ := set $cfg "auth" $auth }}
{{- end }}
{{- if .Values.database.existingSecret }}
{{- $_ := set $cfg "database" (dict "url" "${DATABASE_URL}" "schema_name" .Values.database.schemaName) }}
{{- end }}
{{- if .Values.admin.enabled }}
{{- if not .Values.database.existingSecret }}
{{- fail "admin.enabled needs database.existingSecret (the admin API keeps keys in PostgreSQL)" }}
{{- end }}
{{- $admin := dict "listen" (dict "host" "0.0.0.0" "port" (int .Values.admin.port)) "tokens" .Values.admin.tokens }}
{{- if .Values.admin.jwt }}
{{- $_ := set $admin "jwt" .Values.admin.jwt }}
{{- end }}
{{- $_ := set $cfg "admin" $admin }}
{{- end }}
{{- if .Values.tracing.enabled }}
{{- if not .Values.tracing.otlpEndpoint }}
{{- fail "tracing.enabled needs tracing.otlpEndpoint" }}
{{- end }}
{{- $_ := set $cfg "tracing" (dict "otlp_endpoint" .Values.tracing.otlpEndpoint "sample_ratio" .Values.tracing.sampleRatio "capture_content" .Values.tracing.captureContent) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Environment from Secrets: the chart's (secrets.env) and the user's (existingSecret). */}}
{{- define "spillway.envFrom" -}}
{{- if .Values.secrets.env }}
- secretRef:
    name: {{ include "spillway.fullname" . }}
{{- end }}
{{- if .Values.secrets.existingSecret }}
- secretRef:
    name: {{ .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{- define "spillway.redisEnv" -}}
{{- if eq .Values.redis.mode "internal" }}
- name: REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "spillway.redisName" .) | quote }}
{{- else if eq .Values.redis.mode "external" }}
{{- if .Values.redis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.url }}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- else }}
{{- fail "redis.mode external needs redis.url or redis.existingSecret" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spillway.databaseEnv" -}}
{{- if .Values.database.existingSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- end }}
{{- end }}

{{- define "spillway.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}
