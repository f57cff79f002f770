-- The pilot's routing (dicom_nodes/pilot/compose.yaml): Orthanc, the PACS the scanners push to,
-- forwards every ultrasound image it stores to the node (DicomModalities "lus-pacs"). The node's
-- results (SR, SEG, KO, PR) are not US images, so they stay in the PACS and never loop back.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] == 'US' and origin['RequestOrigin'] ~= 'Lua' then
    SendToModality(instanceId, 'lus-pacs')
  end
end
