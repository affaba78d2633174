{{/* Names, labels and the image, shared by every template. */}}

{{- define "imagecache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: `<release>` when it already contains the chart name, else
`<release>-<chart>`. Kept to 40 characters so that suffixed names (`-operator-metrics`) stay
valid DNS labels.
*/}}
{{- define "imagecache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagecache.operatorName" -}}
{{- printf "%s-operator" (include "imagecache.fullname" .) }}
{{- end }}

{{- define "imagecache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selects the release's objects; never change it (Deployment selectors are immutable). */}}
{{- define "imagecache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagecache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Helm's recommended labels. */}}
{{- define "imagecache.labels" -}}
helm.sh/chart: {{ include "imagecache.chart" . }}
{{ include "imagecache.selectorLabels" . }}
app.kubernetes.io/version: {{ include "imagecache.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imagecache
{{- end }}

{{- define "imagecache.operatorSelectorLabels" -}}
{{ include "imagecache.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "imagecache.operatorLabels" -}}
{{ include "imagecache.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The deployed version: the image tag, else the chart's appVersion. */}}
{{- define "imagecache.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" | trimSuffix "." | trimSuffix "_" }}
{{- end }}

{{/* The image reference: repository@digest, else repository:tag. */}}
{{- define "imagecache.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "imagecache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagecache.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "imagecache.leaseName" -}}
{{- default (include "imagecache.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/*
The default ImageCache's name. Its registry pods are selected by app.kubernetes.io/name and
app.kubernetes.io/instance=<this name>, so it must differ from the release name or the registry
Service would also select the operator's pods.
*/}}
{{- define "imagecache.mirrorName" -}}
{{- $name := default (printf "%s-mirror" (include "imagecache.fullname" .)) .Values.mirror.name }}
{{- if eq $name .Release.Name }}
{{- fail (printf "mirror.name must differ from the release name %q (the cache's pods would share the operator's labels)" .Release.Name) }}
{{- end }}
{{- $name }}
{{- end }}
