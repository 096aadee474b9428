// Workbench in JupyterLab: a "Workbench" section in the Launcher and command-palette entries, each opening a
// fresh copy of one teaching notebook in the current folder (the shipped notebooks are never opened or changed).
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from "@jupyterlab/application";
import { ICommandPalette } from "@jupyterlab/apputils";
import { ILauncher } from "@jupyterlab/launcher";
import { NOTEBOOKS } from "./notebooks";

const CATEGORY = "Workbench";

/** The first free `stem.ipynb`, `stem-2.ipynb`, ... in `dir`, so an earlier copy (and its edits) stays. */
async function freePath(app: JupyterFrontEnd, dir: string, stem: string): Promise<string> {
  for (let i = 1; i < 1000; i++) {
    const name = i === 1 ? `${stem}.ipynb` : `${stem}-${i}.ipynb`;
    const path = dir ? `${dir}/${name}` : name;
    try {
      await app.serviceManager.contents.get(path, { content: false });
    } catch {
      return path;
    }
  }
  throw new Error(`No free name for a copy of ${stem}.ipynb in ${dir || "the root folder"}.`);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: "interp-workbench:notebooks",
  description: "Open fresh copies of the Workbench teaching notebooks from the Launcher and the command palette.",
  autoStart: true,
  optional: [ILauncher, ICommandPalette],
  activate: (app: JupyterFrontEnd, launcher: ILauncher | null, palette: ICommandPalette | null) => {
    NOTEBOOKS.forEach((nb, rank) => {
      const command = `workbench:open-${nb.name}`;
      app.commands.addCommand(command, {
        label: (args) => (args.isPalette ? `Open a fresh copy of ${nb.title}` : nb.title),
        caption: `A fresh copy of ${nb.name}.ipynb in this folder; the shipped notebook stays as it is`,
        execute: async (args) => {
          const cwd = typeof args.cwd === "string" ? args.cwd : "";
          const path = await freePath(app, cwd, nb.name);
          await app.serviceManager.contents.save(path, { type: "notebook", format: "json", content: nb.content });
          return app.commands.execute("docmanager:open", { path });
        },
      });
      launcher?.add({ command, category: CATEGORY, rank });
      palette?.addItem({ command, category: CATEGORY, args: { isPalette: true } });
    });
  },
};

export default plugin;
