{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "roundhouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of the chart's objects: the release name when it contains
the chart name (so `helm install roundhouse` gives "roundhouse"), else
"<chart>-<release>".
*/}}
{{- define "roundhouse.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" $name .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "roundhouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the chart.
*/}}
{{- define "roundhouse.labels" -}}
helm.sh/chart: {{ include "roundhouse.chart" . }}
{{ include "roundhouse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: roundhouse
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of the operator Pods (immutable on the Deployment: keep small).
*/}}
{{- define "roundhouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roundhouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator image; also the default agent image.
*/}}
{{- define "roundhouse.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "roundhouse.agentImage" -}}
{{- .Values.proxy.agentImage | default (include "roundhouse.image" .) }}
{{- end }}

{{/*
Non-empty when the GatewayClass must wait for the next upgrade: the chart installs the
Gateway API CRDs and the API server does not serve GatewayClass yet (see
templates/gatewayclass.yaml).
*/}}
{{- define "roundhouse.gatewayClassDeferred" -}}
{{- if and .Values.gatewayAPI.enabled .Values.gatewayAPI.gatewayClass.create .Values.gatewayAPI.installCRDs (not (.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1/GatewayClass")) -}}
true
{{- end }}
{{- end }}
