{{/* Names and labels. */}}
{{- define "headhub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "headhub.fullname" -}}
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

{{- define "headhub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "headhub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (list $ "api"). */}}
{{- define "headhub.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "headhub.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "headhub.componentLabels" -}}
{{ include "headhub.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "headhub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "headhub.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "headhub.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "headhub.secretName" -}}
{{- default (printf "%s-secrets" (include "headhub.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "headhub.configName" -}}
{{- printf "%s-config" (include "headhub.fullname" .) }}
{{- end }}

{{- define "headhub.blobClaimName" -}}
{{- default (printf "%s-blobs" (include "headhub.fullname" .)) .Values.blobs.persistence.existingClaim }}
{{- end }}

{{/* HEADHUB_EXTRACTOR_URLS: the extractor Service unless extractor.urls names others. */}}
{{- define "headhub.extractorUrls" -}}
{{- if .Values.extractor.urls }}
{{- join "," .Values.extractor.urls }}
{{- else if .Values.extractor.enabled }}
{{- printf "http://%s-extractor.%s.svc:%v" (include "headhub.fullname" .) .Release.Namespace (int .Values.extractor.service.port) }}
{{- else }}
{{- fail "extractor.enabled=false needs extractor.urls (the extractor replicas the API and workers call)" }}
{{- end }}
{{- end }}

{{/*
A value as an environment string. Helm reads numbers in values as float64, so 67108864 would
print as 6.7108864e+07: whole numbers print as integers, everything else as is.
*/}}
{{- define "headhub.envString" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- . | int64 | toString }}
{{- else }}
{{- . | toString }}
{{- end }}
{{- end }}

{{/*
Checks that make a wrong install fail at render time, not at 3 a.m.; included by every
template that depends on them.
*/}}
{{- define "headhub.validate" -}}
{{- $reserved := dict
  "HEADHUB_DATABASE_URL" "secrets.databaseUrl (or secrets.existingSecret)"
  "HEADHUB_ADMIN_KEY" "secrets.adminKey (or secrets.existingSecret)"
  "HEADHUB_KEY_PEPPER" "secrets.keyPepper (or secrets.existingSecret)"
  "HEADHUB_REDIS_URL" "secrets.redisUrl (or secrets.existingSecret)"
  "HEADHUB_DATA_DIR" "nothing: the chart mounts an emptyDir at /data"
  "HEADHUB_BLOB_DIR" "blobs.dir"
  "HEADHUB_BLOB_URL" "blobs.s3.url"
  "HEADHUB_EXTRACTOR_URLS" "extractor.urls"
  "HEADHUB_WORKER_HEALTH_PORT" "worker.healthPort" }}
{{- range $k, $v := .Values.config }}
{{- if hasKey $reserved $k }}
{{- fail (printf "config.%s is set by the chart: use %s" $k (get $reserved $k)) }}
{{- end }}
{{- if not (hasPrefix "HEADHUB_" $k) }}
{{- fail (printf "config.%s: only HEADHUB_* settings belong in config (use extraEnv)" $k) }}
{{- end }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- $db := required "secrets.databaseUrl is required (postgresql+psycopg://user:password@host:5432/db), or set secrets.existingSecret" .Values.secrets.databaseUrl }}
{{- if hasPrefix "sqlite" $db }}
{{- fail "secrets.databaseUrl: SQLite cannot be shared between pods; use PostgreSQL" }}
{{- end }}
{{- $admin := required "secrets.adminKey is required (32+ characters), or set secrets.existingSecret" .Values.secrets.adminKey }}
{{- if lt (len $admin) 32 }}
{{- fail "secrets.adminKey must be at least 32 characters" }}
{{- end }}
{{- $_ := required "secrets.keyPepper is required (the same HMAC pepper in every pod), or set secrets.existingSecret" .Values.secrets.keyPepper }}
{{- end }}
{{- if eq .Values.blobs.backend "directory" }}
{{- if not .Values.blobs.persistence.enabled }}
{{- fail "blobs.backend=directory needs blobs.persistence.enabled: one ReadWriteMany volume shared by the API, workers and gc (or use blobs.backend=s3)" }}
{{- end }}
{{- else if eq .Values.blobs.backend "s3" }}
{{- if not (hasPrefix "s3://" (required "blobs.backend=s3 needs blobs.s3.url (s3://bucket/prefix)" .Values.blobs.s3.url)) }}
{{- fail "blobs.s3.url must look like s3://bucket/prefix" }}
{{- end }}
{{- else }}
{{- fail (printf "blobs.backend must be directory or s3, not %q" .Values.blobs.backend) }}
{{- end }}
{{- end }}

{{/* Pod-level security context: non-root, the image's uid. */}}
{{- define "headhub.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context: read-only root, no privilege, no capabilities. */}}
{{- define "headhub.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/*
Environment of the pods that talk to the database (API, worker, gc; migrate has its own):
the ConfigMap, then the secrets by reference. (list $ "api"): only the API gets the admin key
and the pepper (the only code that hashes or checks keys).
*/}}
{{- define "headhub.env" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- $keys := $.Values.secrets.secretKeys -}}
- name: HEADHUB_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "headhub.secretName" $ }}, key: {{ $keys.databaseUrl }}}
{{- if eq $component "api" }}
- name: HEADHUB_ADMIN_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "headhub.secretName" $ }}, key: {{ $keys.adminKey }}}
- name: HEADHUB_KEY_PEPPER
  valueFrom:
    secretKeyRef: {name: {{ include "headhub.secretName" $ }}, key: {{ $keys.keyPepper }}}
{{- end }}
{{- if or $.Values.secrets.existingSecret $.Values.secrets.redisUrl }}
- name: HEADHUB_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ include "headhub.secretName" $ }}, key: {{ $keys.redisUrl }}, optional: true}
{{- end }}
{{- with $.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "headhub.envFrom" -}}
- configMapRef:
    name: {{ include "headhub.configName" . }}
{{- if and (eq .Values.blobs.backend "s3") .Values.blobs.s3.credentialsSecret }}
- secretRef:
    name: {{ .Values.blobs.s3.credentialsSecret }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Writable paths under a read-only root: /tmp, /data (HEADHUB_DATA_DIR), the blob volume. */}}
{{- define "headhub.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: {{ .Values.tmpSizeLimit }}}
- name: data
  emptyDir: {sizeLimit: 1Gi}
{{- if eq .Values.blobs.backend "directory" }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "headhub.blobClaimName" . }}
{{- end }}
{{- end }}

{{- define "headhub.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /data
{{- if eq .Values.blobs.backend "directory" }}
- name: blobs
  mountPath: {{ .Values.blobs.dir }}
{{- end }}
{{- end }}

{{/* Pod metadata annotations: a changed ConfigMap or chart-made Secret rolls the pods. */}}
{{- define "headhub.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secrets: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling knobs shared by every pod. */}}
{{- define "headhub.scheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* (list $ "api"): prefer one pod of the component per node. */}}
{{- define "headhub.topologySpread" -}}
{{- $ := index . 0 }}
{{- if $.Values.spreadAcrossNodes -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "headhub.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/*
An HTTP probe on a named port: (list "/healthz" .Values.api.livenessProbe) probes the port
named http, (list "/healthz" $w.livenessProbe "health") the one named health.
*/}}
{{- define "headhub.httpProbe" -}}
httpGet:
  path: {{ index . 0 }}
  port: {{ if gt (len .) 2 }}{{ index . 2 }}{{ else }}http{{ end }}
{{ toYaml (index . 1) }}
{{- end }}
