-- Routing rule: every chest radiograph Orthanc stores goes to the cxrad screening node (the "cxrad" entry of
-- DicomModalities): CR and DX films, and Secondary Captures of a chest. The node's own results (they arrive
-- from AE title CXRAD: reports and heatmaps) are never sent back to it, so nothing loops.
local SCREENED = { CR = true, DX = true }
local SECONDARY_CAPTURE = '1.2.840.10008.5.1.4.1.1.7'

function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] == 'CXRAD' then
    return
  end
  local chestCapture = tags['SOPClassUID'] == SECONDARY_CAPTURE and tags['BodyPartExamined'] == 'CHEST'
  if SCREENED[tags['Modality']] or chestCapture then
    SendToModality(instanceId, 'cxrad')
  end
end
