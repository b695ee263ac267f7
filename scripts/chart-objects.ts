// Prints the objects the chart renders (kind/name) for each values file in helm/rmt-serve/ci/,
// after checking each against its schema:  node --import tsx scripts/chart-objects.ts
import { CI_VALUES, objectList, render, validateObject } from '../test/deploy/chart-render.ts';

for (const file of CI_VALUES) {
  const objects = render({ files: [file] });
  objects.forEach(validateObject);
  console.log(`${file} (${objects.length} objects):\n${objectList(objects).map((o) => `  ${o}`).join('\n')}`);
}
