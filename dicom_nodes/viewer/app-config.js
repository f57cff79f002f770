// OHIF configuration of the viewer proof, served by nginx in place of the app-config.js of the
// built OHIF (see nginx.template.conf). One data source: the test PACS's DICOMweb, proxied by
// the same nginx under /dicom-web/, so browser, viewer and data share one origin (no CORS).
/** @type {AppTypes.Config} */
window.config = {
  name: 'lus-pacs viewer proof',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  // Headless Chromium renders with SwiftShader or the CPU; no banner over the screenshot.
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  // No "investigational use" dialog on first start (a fresh browser profile every test run).
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'lus-pacs test PACS (Orthanc DICOMweb)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        // Orthanc answers QIDO/WADO-RS dynamically; there are no static metadata files.
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
