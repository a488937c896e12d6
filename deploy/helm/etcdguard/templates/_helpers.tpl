{{- define "etcdguard.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdguard.selectorLabels" -}}
app.kubernetes.io/name: etcdguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etcdguard.labels" -}}
{{ include "etcdguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "etcdguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "etcdguard.name" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "etcdguard.credentialsSecret" -}}
{{- if .Values.credentials.create -}}
{{ include "etcdguard.name" . }}-aws
{{- else -}}
{{ .Values.credentials.existingSecret }}
{{- end -}}
{{- end -}}
