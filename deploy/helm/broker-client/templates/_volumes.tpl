{{/* Volumes shared by the tunnel and webhook pods: accept.json, the CA
bundle, and a writable /tmp (the root filesystem is read-only). */}}
{{- define "bc.volumes" -}}
- name: accept
  configMap:
    name: {{ include "bc.acceptConfigMapName" . }}
    items:
      - key: {{ include "bc.acceptKey" . }}
        path: accept.json
{{- if include "bc.hasCa" . }}
- name: ca
  {{- if .Values.caCertFileSecret.name }}
  secret:
    secretName: {{ .Values.caCertFileSecret.name }}
    items:
      - key: {{ .Values.caCertFileSecret.key }}
        path: ca.pem
  {{- else if .Values.caCertConfigMap.name }}
  configMap:
    name: {{ .Values.caCertConfigMap.name }}
    items:
      - key: {{ .Values.caCertConfigMap.key }}
        path: ca.pem
  {{- else }}
  configMap:
    name: {{ include "bc.fullname" . }}-ca
  {{- end }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "bc.volumeMounts" -}}
- name: accept
  mountPath: /etc/broker/accept
  readOnly: true
{{- if include "bc.hasCa" . }}
- name: ca
  mountPath: /etc/broker/ca
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Environment every container of the client shares. */}}
{{- define "bc.commonEnv" -}}
- name: BROKER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "bc.tokenSecretName" . }}
      key: {{ include "bc.tokenSecretKey" . }}
- name: ACCEPT
  value: /etc/broker/accept/accept.json
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if include "bc.hasCa" . }}
- name: CA_CERT
  value: /etc/broker/ca/ca.pem
{{- end }}
{{- end -}}

{{/* Restart pods when the configuration they read changes. */}}
{{- define "bc.checksums" -}}
checksum/accept: {{ .Values.acceptJson | sha256sum }}
checksum/ca: {{ include "bc.caPem" . | sha256sum }}
{{- end -}}
