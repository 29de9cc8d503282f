-- -*- lua -*-
-- vm-wrapper 0.1.0 -- Lua modulefile for Lmod (Lmod prefers it to the Tcl file beside it).
--
-- The tree root is found from this file's own location, <root>/src/modules/vm-wrapper/0.1.0.lua,
-- so the same file works in a git checkout and in an installed copy. Symlinks are resolved
-- first (Lmod's abspath), so a site may link it into its module tree.
--
-- Effect on the environment: <root>/src/scripts is prepended to PATH (a directory holding
-- only vm-wrapper's own qsub/sbatch wrappers, so nothing else is shadowed), and
-- VM_WRAPPER_HOME is set to <root>. Nothing else. Unload reverses both.

help([[
vm-wrapper 0.1.0: run HPC batch jobs inside virtual machines.

Loading this module puts vm-wrapper's qsub and sbatch wrappers first on PATH
(from $VM_WRAPPER_HOME/src/scripts). Submit jobs as usual; the wrappers
hand them to the real batch system, which then runs them inside VMs.

Sets: PATH (prepends $VM_WRAPPER_HOME/src/scripts), VM_WRAPPER_HOME.
]])

whatis("Name: vm-wrapper")
whatis("Version: 0.1.0")
whatis("Description: run HPC batch jobs inside VMs (qsub/sbatch wrappers first on PATH)")

-- Only one vm-wrapper at a time, whatever its version or tree.
conflict("vm-wrapper")

local file = myFileName()
file = (abspath and abspath(file)) or file
local root = file:match("^(.*)/[^/]+/[^/]+/[^/]+/[^/]+$")
if root == nil or root == "" then
   LmodError("vm-wrapper: cannot find the tree root from " .. file)
end
local scripts = pathJoin(root, "src", "scripts")

-- Refuse to load from a broken tree: with the wrappers missing, qsub would silently
-- resolve to the real batch system and the job would run outside any VM.
if mode() == "load" and not isDir(scripts) then
   LmodError("vm-wrapper: " .. scripts .. " is missing; the vm-wrapper tree at " .. root
             .. " is incomplete")
end

prepend_path("PATH", scripts)
setenv("VM_WRAPPER_HOME", root)
