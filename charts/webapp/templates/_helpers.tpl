{{/* Name of every object of the release: the app name (each preview has its own namespace). */}}
{{- define "webapp.fullname" -}}
{{- .Values.app.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the app's pods. */}}
{{- define "webapp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.app.name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "webapp.labels" -}}
{{ include "webapp.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | quote }}
{{- with .Values.pr.number }}
prpod.dev/pr: {{ . | toString | quote }}
{{- end }}
{{- end -}}

{{/* Annotations on every object: what the preview was built from. */}}
{{- define "webapp.annotations" -}}
prpod.dev/commit: {{ .Values.pr.commit | quote }}
prpod.dev/branch: {{ .Values.pr.branch | quote }}
prpod.dev/repository: {{ .Values.pr.repository | quote }}
{{- end -}}

{{/* The container image: repository[:tag][@digest]. */}}
{{- define "webapp.image" -}}
{{- $ref := .Values.image.repository -}}
{{- if .Values.image.tag -}}
{{- $ref = printf "%s:%s" $ref (toString .Values.image.tag) -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The probe handler: HTTP GET on the health path, else a TCP connect, on the first port. */}}
{{- define "webapp.probeHandler" -}}
{{- $port := (first .Values.ports).name -}}
{{- if .Values.healthPath -}}
httpGet:
  path: {{ .Values.healthPath | quote }}
  port: {{ $port | quote }}
{{- else -}}
tcpSocket:
  port: {{ $port | quote }}
{{- end -}}
{{- end -}}
