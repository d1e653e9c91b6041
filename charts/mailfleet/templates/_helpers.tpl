{{/* Names: the usual chart conventions (63-character DNS labels). */}}
{{- define "mailfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.fullname" -}}
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

{{- define "mailfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart makes. */}}
{{- define "mailfleet.labels" -}}
helm.sh/chart: {{ include "mailfleet.chart" . }}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailfleet
{{- end }}

{{/* The operator's pods (stable across upgrades: a Deployment selector is immutable). */}}
{{- define "mailfleet.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mailfleet.operatorLabels" -}}
{{ include "mailfleet.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mailfleet.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "mailfleet.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; tag defaults to the appVersion. */}}
{{- define "mailfleet.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "mailfleet.operatorImage" -}}
{{- include "mailfleet.image" (dict "image" .Values.operator.image "chart" .Chart) }}
{{- end }}

{{- define "mailfleet.relayImage" -}}
{{- include "mailfleet.image" (dict "image" .Values.relay.image "chart" .Chart) }}
{{- end }}

{{- define "mailfleet.leaseName" -}}
{{- default (include "mailfleet.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "mailfleet.webhookService" -}}
{{- printf "%s-webhook" (include "mailfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.webhookConfigurationName" -}}
{{- default (printf "%s-webhook" (include "mailfleet.fullname" .)) .Values.webhook.configurationName }}
{{- end }}

{{- define "mailfleet.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "mailfleet.fullname" .)) .Values.webhook.secretName }}
{{- end }}

{{- define "mailfleet.metricsService" -}}
{{- printf "%s-metrics" (include "mailfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The relay pods' labels, as operator/render/pool.ts sets them (poolLabels). */}}
{{- define "mailfleet.relaySelector" -}}
app.kubernetes.io/name: mailfleet-relay
app.kubernetes.io/component: relay
app.kubernetes.io/managed-by: mailfleet-operator
{{- end }}

{{/* Both monitor kinds at once would scrape every target twice. */}}
{{- define "mailfleet.checkMonitors" -}}
{{- if and .Values.monitoring.serviceMonitor.enabled .Values.monitoring.podMonitor.enabled }}
{{- fail "monitoring.serviceMonitor.enabled and monitoring.podMonitor.enabled are both true: choose one (each scrapes the operator and the relays)" }}
{{- end }}
{{- end }}

{{/*
  A monitoring object needs prometheus-operator's CRDs: say which value asked for it rather than
  Helm's "no matches for kind". (helm template: pass --api-versions monitoring.coreos.com/v1/<Kind>.)
*/}}
{{- define "mailfleet.requireKind" -}}
{{- /* helm lint renders as neither install nor upgrade and has no --api-versions: no check there. */}}
{{- if and (or .root.Release.IsInstall .root.Release.IsUpgrade) (not (.root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind))) }}
{{- fail (printf "%s is true but the cluster serves no monitoring.coreos.com/v1 %s: install prometheus-operator's CRDs (kube-prometheus-stack brings them) or turn it off" .value .kind) }}
{{- end }}
{{- end }}
