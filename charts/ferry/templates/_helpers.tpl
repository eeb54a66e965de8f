{{/*
Naming and labelling helpers shared by every template of the Ferry chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of object names: fullnameOverride, else the release name (when it already contains the
chart name), else "<release>-<chart>". Kept to 63 characters (DNS label).
*/}}
{{- define "ferry.fullname" -}}
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

{{/* Name of the operator's Deployment (and prefix of its other objects). */}}
{{- define "ferry.operator.fullname" -}}
{{- printf "%s-operator" (include "ferry.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end }}

{{/* The stable subset of the labels, used in selectors (never change these between releases). */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "ferry.operator.labels" -}}
{{ include "ferry.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector of the operator's pods. */}}
{{- define "ferry.operator.selectorLabels" -}}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image tag: image.tag, else the chart's appVersion. */}}
{{- define "ferry.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The operator's image reference. */}}
{{- define "ferry.operator.image" -}}
{{- printf "%s/ferry-operator:%s" (trimSuffix "/" .Values.image.registry) (include "ferry.imageTag" .) }}
{{- end }}

{{/*
Namespace of the custom resources the chart creates (default AddressSpace, tenants): the watched
namespace when the operator is restricted to one, else the release namespace.
*/}}
{{- define "ferry.resourceNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{/*
The operator's permissions on the objects it watches and owns (K8S-CONTRACT.md). Used by a ClusterRole
(all namespaces) or a Role (watchNamespace).
*/}}
{{- define "ferry.operator.rules" -}}
# The custom resources it reconciles (patch: finalizers; status through the subresource).
- apiGroups: ["ferry.dev"]
  resources: ["addressspaces", "tenants"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ferry.dev"]
  resources: ["addressspaces/status", "tenants/status"]
  verbs: ["get", "patch"]
- apiGroups: ["ferry.dev"]
  resources: ["addressspaces/finalizers", "tenants/finalizers"]
  verbs: ["update"]
# The workloads and configuration it builds for an AddressSpace: server-side apply (PATCH, and
# create when the object does not exist yet), deletes when an adapter is switched off, and watches
# on the workloads for readiness.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets", "persistentvolumeclaims"]
  verbs: ["get", "create", "patch", "delete"]
# Disruption budgets of components with several replicas, and (networkPolicies.enabled) each
# component's NetworkPolicy; deleted when no longer wanted.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
# Events on the custom resources.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Fails the release when the chart's AddressSpace names an image registry the operator would refuse
(the operator checks every AddressSpace the same way, in its status).
*/}}
{{- define "ferry.checkImageRegistry" -}}
{{- $wanted := trimSuffix "/" (((.Values.addressSpace.spec | default dict).image | default dict).registry | default "") }}
{{- if and .Values.addressSpace.create $wanted }}
{{- $allowed := list (trimSuffix "/" .Values.image.registry) }}
{{- range .Values.security.allowedImageRegistries }}{{ $allowed = append $allowed (trimSuffix "/" .) }}{{ end }}
{{- $ok := false }}
{{- range $allowed }}
{{- if or (eq $wanted .) (hasPrefix (printf "%s/" .) $wanted) }}{{ $ok = true }}{{ end }}
{{- end }}
{{- if not $ok }}
{{- fail (printf "addressSpace.spec.image.registry %q is not an allowed image registry (allowed: %s); add it to security.allowedImageRegistries" $wanted (join ", " $allowed)) }}
{{- end }}
{{- end }}
{{- include "ferry.checkNatsImage" . }}
{{- end }}

{{/*
The same for a managed NATS image (spec.messaging.nats.managed.image): its registry path (the
reference without its last segment) must be image.nats's, image.registry or an allowed one.
*/}}
{{- define "ferry.checkNatsImage" -}}
{{- $messaging := (.Values.addressSpace.spec | default dict).messaging | default dict }}
{{- $managed := (($messaging.nats | default dict).managed | default dict) }}
{{- if and .Values.addressSpace.create (hasKey ($messaging.nats | default dict) "external") (hasKey ($messaging.nats | default dict) "managed") }}
{{- fail "addressSpace.spec.messaging.nats: give external or managed, not both" }}
{{- end }}
{{- $image := $managed.image | default "" }}
{{- if and .Values.addressSpace.create $image }}
{{- $path := (splitList "@" $image | first) }}
{{- $parts := splitList "/" $path }}
{{- $wanted := join "/" (initial $parts) }}
{{- $natsParts := splitList "/" (splitList "@" .Values.image.nats | first) }}
{{- $allowed := list (join "/" (initial $natsParts)) (trimSuffix "/" .Values.image.registry) }}
{{- range .Values.security.allowedImageRegistries }}{{ $allowed = append $allowed (trimSuffix "/" .) }}{{ end }}
{{- $ok := false }}
{{- range $allowed }}
{{- if and . (or (eq $wanted .) (hasPrefix (printf "%s/" .) $wanted)) }}{{ $ok = true }}{{ end }}
{{- end }}
{{- if not $ok }}
{{- fail (printf "addressSpace.spec.messaging.nats.managed.image %q: registry %q is not an allowed image registry (allowed: %s); add it to security.allowedImageRegistries" $image $wanted (join ", " $allowed)) }}
{{- end }}
{{- end }}
{{- end }}
